"""The building blocks of ChatGLM3, batch-first, named like the official modules (so the state-dict keys match).

Norms, the partial interleaved RoPE, fused-QKV multi-query attention, the SwiGLU MLP, one transformer layer and
the P-tuning v2 prefix encoder. `modeling.py` assembles them into the model.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration import ChatGLM3Config

_HALF_DTYPES = (torch.float16, torch.bfloat16)


class ChatGLM3RMSNorm(nn.Module):
    """RMSNorm exactly as the reference: statistics in fp32, the weight applied in fp32, then cast back."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)  # [..., 1], fp32
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)  # promoted to fp32
        return (self.weight * hidden_states).to(input_dtype)


def _norm(config: ChatGLM3Config) -> nn.Module:
    if config.rmsnorm:
        return ChatGLM3RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
    return nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class ChatGLM3RotaryEmbedding(nn.Module):
    """Cos/sin tables of ChatGLM's RoPE, which rotates only the first half of each head, in adjacent pairs.

    The reference builds `RotaryEmbedding(kv_channels // 2)` and a `[seq_length, rotary_dim/2, 2]` table in fp32;
    here the same angles are computed for the requested positions only (so positions are not capped at
    `seq_length`). `inv_freq` is kept as a buffer only because official checkpoints carry it
    (`transformer.rotary_pos_emb.inv_freq`); like the reference, the frequencies are recomputed in fp32.
    """

    def __init__(self, config: ChatGLM3Config):
        super().__init__()
        self.rotary_dim = config.kv_channels // 2  # rotated dims per head; the other half passes through
        self.base = 10000 * config.rope_ratio  # ChatGLM3-6b-32k scales the base (rope_ratio 50)
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=True)

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float, device=device) / self.rotary_dim
        return 1.0 / (self.base**exponents)  # [rotary_dim / 2]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.compute_inv_freq(device=position_ids.device)  # [rotary_dim / 2]
        angles = position_ids.float()[..., None] * theta  # [batch, seq, rotary_dim / 2]
        return angles.cos(), angles.sin()


def apply_rotary_pos_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates pairs (x[2i], x[2i+1]) of the first `2 * cos.shape[-1]` dims of every head; the rest pass through.

    x: [batch, seq, heads, head_dim]; cos, sin: [batch, seq, rotary_dim / 2] in fp32. For half-precision inputs the
    tables are cast to that dtype first and the rotation runs in it, as the reference does ("mimic complex32").
    """
    if x.dtype in _HALF_DTYPES:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = cos.shape[-1]
    x_rot, x_pass = x[..., : 2 * half], x[..., 2 * half :]
    x_pairs = x_rot.reshape(*x_rot.shape[:-1], half, 2)  # [batch, seq, heads, rotary_dim / 2, 2]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [batch, seq, 1, rotary_dim / 2]
    x0, x1 = x_pairs[..., 0], x_pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    return torch.cat((rotated.to(x.dtype), x_pass), dim=-1)  # [batch, seq, heads, head_dim]


class ChatGLM3Attention(nn.Module):
    """Self-attention with ChatGLM's fused QKV projection and multi-query groups (GQA)."""

    def __init__(self, config: ChatGLM3Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.num_kv_heads = config.num_key_value_heads
        self.multi_query_attention = config.multi_query_attention
        projection_size = self.num_heads * self.head_dim
        qkv_size = projection_size + 2 * self.num_kv_heads * self.head_dim
        if not self.multi_query_attention:
            qkv_size = 3 * projection_size
        self.query_key_value = nn.Linear(
            config.hidden_size, qkv_size, bias=config.add_bias_linear or config.add_qkv_bias
        )
        self.dense = nn.Linear(projection_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(
        self,
        hidden_states: torch.Tensor,
        prefix_key_value: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        is_causal: bool,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        mixed = self.query_key_value(hidden_states)  # [batch, seq, qkv_size]
        if self.multi_query_attention:
            # Layout: all query heads, then the key groups, then the value groups.
            query, key, value = mixed.split(
                [
                    self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                ],
                dim=-1,
            )
            query = query.view(batch, seq, self.num_heads, self.head_dim)
            key = key.view(batch, seq, self.num_kv_heads, self.head_dim)
            value = value.view(batch, seq, self.num_kv_heads, self.head_dim)
        else:
            # Without multi-query attention the reference interleaves q, k, v per head.
            per_head = mixed.view(batch, seq, self.num_heads, 3 * self.head_dim)
            query, key, value = per_head.split(self.head_dim, dim=-1)

        cos, sin = position_embeddings
        query = apply_rotary_pos_emb(query, cos, sin).transpose(1, 2)  # [batch, heads, seq, head_dim]
        key = apply_rotary_pos_emb(key, cos, sin).transpose(1, 2)  # [batch, kv_heads, seq, head_dim]
        value = value.transpose(1, 2)  # [batch, kv_heads, seq, head_dim]

        if prefix_key_value is not None:  # P-tuning v2: un-rotated virtual keys/values come first
            key = torch.cat((prefix_key_value[0].to(key.dtype), key), dim=2)
            value = torch.cat((prefix_key_value[1].to(value.dtype), value), dim=2)
        if past_key_values is not None:
            # [batch, kv_heads, kv_len, head_dim]
            key, value = past_key_values.update(key, value, self.layer_idx)

        # Group g serves query heads g*r ... g*r+r-1, as the reference's expand(); done explicitly for exact parity.
        repeats = self.num_heads // key.shape[1]
        if repeats > 1:
            key = key.repeat_interleave(repeats, dim=1)  # [batch, heads, kv_len, head_dim]
            value = value.repeat_interleave(repeats, dim=1)

        dropout = self.config.attention_dropout if self.training else 0.0
        if self.config._attn_implementation == "eager":
            context = _eager_attention(query, key, value, attention_mask, is_causal, dropout, self.training)
        else:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, is_causal=is_causal, dropout_p=dropout
            )  # [batch, heads, seq, head_dim]
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.dense(context)  # [batch, seq, hidden]


def _eager_attention(query, key, value, attention_mask, is_causal, dropout, training) -> torch.Tensor:
    """Plain softmax attention with fp32 scores (the reference's torch<2 path); for debugging and comparisons."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * query.shape[-1] ** -0.5
    if is_causal:
        attention_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))  # [batch, heads, seq, kv_len]
    probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=training).to(value.dtype)
    return torch.matmul(probs, value)


class ChatGLM3MLP(nn.Module):
    """SwiGLU: the first half of `dense_h_to_4h` is the gate (silu), the second half the linear branch."""

    def __init__(self, config: ChatGLM3Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(
            config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear
        )
        self.dense_4h_to_h = nn.Linear(
            config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(hidden_states).chunk(2, dim=-1)  # 2 x [batch, seq, ffn]
        return self.dense_4h_to_h(F.silu(gate) * up)  # [batch, seq, hidden]


class ChatGLM3Block(GradientCheckpointingLayer):
    """One pre-norm transformer layer (`transformer.encoder.layers.N`)."""

    def __init__(self, config: ChatGLM3Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = _norm(config)
        self.self_attention = ChatGLM3Attention(config, layer_idx)
        self.post_attention_layernorm = _norm(config)
        self.mlp = ChatGLM3MLP(config)
        self.hidden_dropout = config.hidden_dropout
        self.residual_post_layernorm = config.apply_residual_connection_post_layernorm

    def forward(
        self,
        hidden_states: torch.Tensor,
        prefix_key_value: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        # `hidden_states` and `prefix_key_value` are positional so gradient checkpointing propagates their gradients.
        normed = self.input_layernorm(hidden_states)
        attention = self.self_attention(
            normed, prefix_key_value, attention_mask, is_causal, position_embeddings, past_key_values
        )
        residual = normed if self.residual_post_layernorm else hidden_states
        hidden_states = residual + F.dropout(attention, p=self.hidden_dropout, training=self.training)

        normed = self.post_attention_layernorm(hidden_states)
        residual = normed if self.residual_post_layernorm else hidden_states
        return residual + F.dropout(self.mlp(normed), p=self.hidden_dropout, training=self.training)


class ChatGLM3Embedding(nn.Module):
    """Holds `word_embeddings` under the official key `transformer.embedding.word_embeddings`."""

    def __init__(self, config: ChatGLM3Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)  # [batch, seq, hidden]


class ChatGLM3Encoder(nn.Module):
    """Holds the layers and the final norm under the official keys `transformer.encoder.*`; the loop is in the model."""

    def __init__(self, config: ChatGLM3Config):
        super().__init__()
        self.layers = nn.ModuleList(ChatGLM3Block(config, i) for i in range(config.num_layers))
        if config.post_layer_norm:
            self.final_layernorm = _norm(config)


class ChatGLM3PrefixEncoder(nn.Module):
    """P-tuning v2: one learned key and value vector per layer, group and virtual token.

    Output `[batch, pre_seq_len, num_layers * 2 * groups * head_dim]`; with `prefix_projection` the embedding goes
    through Linear -> Tanh -> Linear first (keys `trans.0` and `trans.2`, as in the official checkpoints).
    """

    def __init__(self, config: ChatGLM3Config):
        super().__init__()
        kv_size = config.num_layers * 2 * config.num_key_value_heads * config.kv_channels
        self.embedding = nn.Embedding(config.pre_seq_len, kv_size)
        if config.prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(kv_size, config.hidden_size), nn.Tanh(), nn.Linear(config.hidden_size, kv_size)
            )
        else:
            self.trans = None
        for part in self.modules():  # see ChatGLM3PreTrainedModel._init_weights
            if isinstance(part, (nn.Embedding, nn.Linear)):
                part._prefix_encoder_part = True

    def forward(self, prefix_tokens: torch.Tensor) -> torch.Tensor:
        prefix = self.embedding(prefix_tokens)  # [batch, pre_seq_len, kv_size]
        return self.trans(prefix) if self.trans is not None else prefix
