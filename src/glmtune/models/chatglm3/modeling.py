"""Native ChatGLM3 for transformers 5: the official computation, batch-first, with a standard `Cache`.

The official remote code (THUDM/chatglm3-6b `modeling_chatglm.py`) no longer runs on transformers 5 (legacy tuple
caches, removed generation hooks). This module re-implements its forward pass exactly, under the official
state-dict keys so real checkpoints load with `strict=True`, but in the shape modern transformers expects:

* activations are batch-first (`[batch, seq, hidden]`) instead of the reference's sequence-first layout;
* the KV cache is a `DynamicCache` holding post-RoPE, un-expanded keys `[batch, groups, seq, head_dim]`, so
  `generate`, beam search and cache-length bookkeeping work without model-specific hooks;
* a P-tuning v2 prefix is written into that cache on the first forward (as the reference does with its tuple
  past) and, when there is no cache (training), handed to each layer as an explicit argument so gradient
  checkpointing keeps its gradient.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration import ChatGLM3Config

logger = logging.get_logger(__name__)

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


class ChatGLM3PreTrainedModel(PreTrainedModel):
    config_class = ChatGLM3Config
    config: ChatGLM3Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ChatGLM3Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # A P-tuning checkpoint loaded without `pre_seq_len`, or a base checkpoint without the buffer, is still usable.
    _keys_to_ignore_on_load_unexpected = [r"prefix_encoder\."]
    _keys_to_ignore_on_load_missing = [r"rotary_pos_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module):
        """Initialises what a checkpoint did not provide (a random model, or a new P-tuning prefix).

        The prefix encoder gets torch's default init (embedding N(0, 1)), which is what the official P-tuning v2
        recipe trains from; everything else gets N(0, initializer_range), norms 1, biases 0. Loading initialises
        only the modules whose weights are missing, so the rule is keyed on the prefix encoder's parts themselves.
        """
        std = self.config.initializer_range
        if getattr(module, "_prefix_encoder_part", False):
            if isinstance(module, nn.Embedding):
                init.normal_(module.weight, mean=0.0, std=1.0)
            else:  # nn.Linear's own reset_parameters
                init.kaiming_uniform_(module.weight, a=5**0.5)
                bound = module.in_features**-0.5
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (ChatGLM3RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ChatGLM3RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(device=module.inv_freq.device))


class ChatGLM3Model(ChatGLM3PreTrainedModel):
    """The ChatGLM3 transformer (`transformer.*` in official checkpoints), including its `output_layer`.

    `forward` returns the final-normed hidden states; `hidden_states` (when asked) holds the embeddings and every
    layer's output, the last entry being the final-normed output (transformers' convention; the remote code puts
    the pre-norm output there instead).
    """

    def __init__(self, config: ChatGLM3Config):
        super().__init__(config)
        self.embedding = ChatGLM3Embedding(config)
        self.rotary_pos_emb = ChatGLM3RotaryEmbedding(config)
        self.encoder = ChatGLM3Encoder(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        if config.pre_seq_len is not None:
            self.prefix_encoder = ChatGLM3PrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)  # fixed in the reference, not configurable
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embedding.word_embeddings = value

    def get_prefix_key_values(
        self, batch_size: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """The P-tuning v2 prefix as per-layer keys and values: `[layers, 2 (key, value), batch, groups, pre, head_dim]`.

        The flat prefix vector is indexed `((layer * 2 + kv) * groups + group) * head_dim + d`, as in the reference.
        """
        config = self.config
        pre_seq_len, groups, head_dim = config.pre_seq_len, config.num_key_value_heads, config.kv_channels
        tokens = torch.arange(pre_seq_len, device=device).unsqueeze(0).expand(batch_size, -1)  # [batch, pre]
        prefix = self.prefix_encoder(tokens).to(dtype)  # [batch, pre, layers * 2 * groups * head_dim]
        prefix = self.prefix_dropout(
            prefix.view(batch_size, pre_seq_len, config.num_layers, 2, groups, head_dim)
        )
        return prefix.permute(2, 3, 0, 4, 1, 5)  # [layers, 2, batch, groups, pre, head_dim]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """Runs the transformer.

        attention_mask: `[batch, past_tokens + seq]`, 1 for real tokens and 0 for (left) padding; it never covers a
        P-tuning prefix. position_ids: `[batch, seq]`; by default derived from the mask so that, as with the
        official tokenizer, the first real token of a left-padded row is at position 0.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if past_key_values is not None and not isinstance(past_key_values, Cache):
            raise TypeError(
                "past_key_values must be a transformers Cache (e.g. DynamicCache), not legacy tuples"
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once(
                "use_cache=True is incompatible with gradient checkpointing; using use_cache=False"
            )
            use_cache = False

        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)  # [batch, seq, hidden]
        batch, seq = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)

        # The cache of a P-tuned model starts with the prefix, which has neither positions nor mask entries.
        cached = past_key_values.get_seq_length() if past_key_values is not None else 0
        prefix_len = self.config.pre_seq_len or 0
        past_tokens = max(cached - prefix_len, 0)
        prefix = None
        if prefix_len and cached == 0:
            prefix = self.get_prefix_key_values(batch, inputs_embeds.dtype, device)

        # [batch, past_tokens + seq]
        attention_mask = _full_padding_mask(attention_mask, batch, seq, past_tokens)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            else:
                position_ids = torch.arange(past_tokens, past_tokens + seq, device=device).expand(batch, -1)
        mask, is_causal = _attention_mask(attention_mask, batch, seq, past_tokens, prefix_len, device)
        position_embeddings = self.rotary_pos_emb(position_ids)  # 2 x [batch, seq, rotary_dim / 2]

        hidden_states = inputs_embeds.float() if self.config.fp32_residual_connection else inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for index, layer in enumerate(self.encoder.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(
                hidden_states,
                prefix[index] if prefix is not None else None,
                attention_mask=mask,
                is_causal=is_causal,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
            )  # [batch, seq, hidden]
        if self.config.post_layer_norm:
            hidden_states = self.encoder.final_layernorm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states,
        )
        return output if return_dict else output.to_tuple()


def _full_padding_mask(
    attention_mask: torch.Tensor | None, batch: int, seq: int, past_tokens: int
) -> torch.Tensor | None:
    """Returns the 2-D padding mask over past and current tokens (`[batch, past_tokens + seq]`), or None."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch:
        raise ValueError(
            f"attention_mask must be a [batch, tokens] padding mask, got {tuple(attention_mask.shape)}"
        )
    if attention_mask.shape[1] == seq and past_tokens:  # only the new tokens given: the past is all real
        attention_mask = torch.cat((attention_mask.new_ones(batch, past_tokens), attention_mask), dim=1)
    if attention_mask.shape[1] != past_tokens + seq:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[1]} tokens, expected {past_tokens + seq} "
            f"(past {past_tokens} + new {seq}; a P-tuning prefix is not part of it)"
        )
    return attention_mask


def _attention_mask(
    padding_mask: torch.Tensor | None,
    batch: int,
    seq: int,
    past_tokens: int,
    prefix_len: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, bool]:
    """The reference's `get_masks` as a boolean SDPA mask (True = may attend), or None plus `is_causal`.

    Keys are `[prefix, past tokens, new tokens]`: the prefix is visible to every query, tokens causally, padded keys
    to nobody. Padded query rows attend to every key, as in the reference, so their softmax is never empty; their
    outputs never reach real tokens.
    """
    kv_len = prefix_len + past_tokens + seq
    padded = padding_mask is not None and not bool(padding_mask.all())
    if not padded:
        if kv_len == seq:
            return None, True  # plain causal prefill: let SDPA pick its causal kernel
        if seq == 1:
            return None, False  # a single new token sees every key
    query_index = torch.arange(kv_len - seq, kv_len, device=device)  # key index of each query
    key_index = torch.arange(kv_len, device=device)
    allowed = (key_index[None, :] <= query_index[:, None]).expand(batch, seq, kv_len)  # [batch, seq, kv_len]
    if padded:
        keys_real = torch.cat(
            (torch.ones(batch, prefix_len, dtype=torch.bool, device=device), padding_mask.bool()), dim=1
        )  # [batch, kv_len]
        query_padded = ~padding_mask[:, -seq:].bool()  # [batch, seq]
        allowed = (allowed & keys_real[:, None, :]) | query_padded[:, :, None]
    return allowed[:, None], False  # [batch, 1, seq, kv_len]


class ChatGLM3ForCausalLM(ChatGLM3PreTrainedModel, GenerationMixin):
    """ChatGLM3 with its LM head, under the official keys (`transformer.*`); works with `generate`."""

    def __init__(self, config: ChatGLM3Config):
        super().__init__(config)
        self.transformer = ChatGLM3Model(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embedding.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.transformer.embedding.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.output_layer

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.transformer.output_layer = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits `[batch, seq, vocab]` and, with `labels`, the mean next-token loss (labels shifted here, -100 ignored).

        `logits_to_keep` (set by `generate`) computes logits for the last N positions only; `num_items_in_batch` in
        kwargs makes the loss a sum divided by it (for exact gradient accumulation).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state  # [batch, seq, hidden]
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.transformer.output_layer(hidden_states)  # [batch, seq, vocab]

        loss = None
        if labels is not None:
            loss = ForCausalLMLoss(
                logits,
                labels,
                vocab_size=self.config.padded_vocab_size,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
            )
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["ChatGLM3ForCausalLM", "ChatGLM3Model", "ChatGLM3PreTrainedModel", "apply_rotary_pos_emb"]
