"""Native ChatGLM3 for transformers 5: the official computation, batch-first, with a standard `Cache`.

The official remote code (THUDM/chatglm3-6b `modeling_chatglm.py`) no longer runs on transformers 5 (legacy tuple
caches, removed generation hooks). This module re-implements its forward pass exactly, under the official
state-dict keys so real checkpoints load with `strict=True`, but in the shape modern transformers expects:

* activations are batch-first (`[batch, seq, hidden]`) instead of the reference's sequence-first layout;
* the KV cache is a `DynamicCache` holding post-RoPE, un-expanded keys `[batch, groups, seq, head_dim]`, so
  `generate`, beam search and cache-length bookkeeping work without model-specific hooks;
* a P-tuning v2 prefix is handed to every layer as an explicit argument on the first forward, so gradient
  checkpointing keeps its gradient, and with a cache it is stored there ahead of the tokens (as the reference
  stores it in its tuple past), so decoding steps see it without recomputing it.

The building blocks live in `layers.py`; this module has the pretrained-model plumbing, masks and positions.
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import logging

from .configuration import ChatGLM3Config
from .layers import (
    ChatGLM3Embedding,
    ChatGLM3Encoder,
    ChatGLM3PrefixEncoder,
    ChatGLM3RMSNorm,
    ChatGLM3RotaryEmbedding,
)

logger = logging.get_logger(__name__)


class ChatGLM3PreTrainedModel(PreTrainedModel):
    config_class = ChatGLM3Config
    config: ChatGLM3Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ChatGLM3Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # The RoPE buffer is recomputed, so a checkpoint without it loads quietly. (A prefix in a checkpoint loaded
    # without `pre_seq_len` is reported as unexpected: silently dropping a trained prefix would be worse.)
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
        official tokenizer, the first real token of a left-padded row is at position 0. A cache is made only when
        asked (`use_cache=True`, as `generate` does); None counts as False, so training never builds one.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if kwargs.get("output_attentions"):
            raise NotImplementedError("ChatGLM3 does not return attention weights (it uses SDPA)")
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
            past_key_values=past_key_values,  # None unless use_cache or a cache was passed (and updated)
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

    # `forward` takes transformers' boolean form of `logits_to_keep` (a [batch, seq] mask): declared for callers
    # that compute logits at learned positions only (glmtune's training), which cannot assume it of every class.
    boolean_logits_to_keep = True

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

        `logits_to_keep` (the last N positions for `generate`, or a boolean [batch, seq] mask in training) computes
        logits for those positions only; `num_items_in_batch` in kwargs makes the loss a sum divided by it (for
        exact gradient accumulation).
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
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # [batch, seq, hidden]
        # transformers' semantics: an int keeps the last N, a 1D tensor those positions, a 2D bool mask the True
        # positions flattened to [kept, hidden] (training: learned positions only).
        hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        logits = self.transformer.output_layer(hidden_states)  # [batch, seq, vocab] or [kept, vocab]

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


__all__ = ["ChatGLM3ForCausalLM", "ChatGLM3Model", "ChatGLM3PreTrainedModel"]
