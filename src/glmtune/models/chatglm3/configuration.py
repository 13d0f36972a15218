"""ChatGLM3 model configuration, spelled with the field names of the official `config.json`.

The official release (THUDM/chatglm3-6b) ships remote code; this config reads its `config.json` as is, so an
official folder loads with `ChatGLM3Config.from_pretrained(folder)` or `AutoConfig.from_pretrained(folder)` once
`glmtune.models.chatglm3` is imported. The generic transformers names (`num_hidden_layers`, `vocab_size`, ...) are
aliases of the official ones, so peft, layer-freezing and heads that only know the generic names work unchanged.
"""

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig


@strict
class ChatGLM3Config(PretrainedConfig):
    """Configuration of a ChatGLM3 (also ChatGLM2 / ChatGLM3-32k) decoder.

    Defaults are the values of chatglm3-6b's `config.json` (not the remote code's class defaults, which differ:
    seq_length 2048, no qkv bias, no multi-query attention), so `ChatGLM3Config()` describes ChatGLM3-6B.

    Fields that only matter to the remote code's torch<2 or quantised paths (`apply_query_key_layer_scaling`,
    `attention_softmax_in_fp32`, `bias_dropout_fusion`, `quantization_bit`, `original_rope`) are kept so a saved
    config round-trips, but they do not change the computation here (the reference's torch>=2 path ignores them too).
    """

    model_type = "chatglm"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    # How a saved folder loads back, for tools that write one (glmtune's export reads these; nothing here depends on
    # it): transformers has no class for this model, and importing `native_import` registers ours with its Auto
    # classes (no remote code). `native_family` is the name to show people.
    native_family: ClassVar[str] = "ChatGLM3"
    native_import: ClassVar[str] = "glmtune.models.chatglm3"
    # Why a GGUF export (llama.cpp) is refused, for tools that write one: gguf's CHATGLM tensor names are reachable
    # from these weights (strip 'transformer.'), but the tokenizer needs llama.cpp's own conversion and nothing
    # installable here reads such a file back to check it.
    gguf_refusal: ClassVar[str] = (
        "ChatGLM3 is not exported to GGUF: its tokenizer needs llama.cpp's ChatGLM3-specific SentencePiece "
        "conversion, and neither transformers' GGUF loader (no chatglm architecture) nor anything installable "
        "here can read the file back to check it"
    )
    # Generic names used by transformers, peft and our own heads -> official ChatGLM names.
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "num_layers",
        "vocab_size": "padded_vocab_size",
        "intermediate_size": "ffn_hidden_size",
        "max_position_embeddings": "seq_length",
        "head_dim": "kv_channels",
        "rms_norm_eps": "layernorm_epsilon",
    }

    num_layers: int = 28
    padded_vocab_size: int = 65024
    hidden_size: int = 4096
    ffn_hidden_size: int = 13696
    kv_channels: int = 128
    num_attention_heads: int = 32
    seq_length: int = 8192
    hidden_dropout: float | int = 0.0
    classifier_dropout: float | int | None = None
    attention_dropout: float | int = 0.0
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True
    apply_residual_connection_post_layernorm: bool = False
    post_layer_norm: bool = True
    add_bias_linear: bool = False
    add_qkv_bias: bool = True
    bias_dropout_fusion: bool = True
    multi_query_attention: bool = True
    multi_query_group_num: int = 2
    apply_query_key_layer_scaling: bool = True
    attention_softmax_in_fp32: bool = True
    fp32_residual_connection: bool = False
    quantization_bit: int = 0
    original_rope: bool = True
    # ChatGLM3-6b-32k: RoPE base = 10000 * rope_ratio. Absent from chatglm3-6b's config (so 1.0).
    rope_ratio: float | int = 1.0
    # P-tuning v2: number of virtual prefix tokens per layer (None: no prefix encoder) and its optional MLP.
    pre_seq_len: int | None = None
    prefix_projection: bool = False
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        # The official config.json points `auto_map` at remote code files that a folder we save does not contain;
        # keeping it would send remote-code loaders to files that are not there. The native classes replace it.
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)

    @property
    def num_key_value_heads(self) -> int:
        """Number of distinct key/value heads (multi-query groups); all heads when multi-query attention is off."""
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    def validate_architecture(self):
        """Checks the shapes the fused QKV split and the interleaved partial RoPE rely on."""
        super().validate_architecture()
        if self.multi_query_attention and self.num_attention_heads % self.multi_query_group_num != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"multi_query_group_num ({self.multi_query_group_num})"
            )
        if self.kv_channels % 4 != 0:
            raise ValueError(
                f"kv_channels ({self.kv_channels}) must be a multiple of 4: RoPE rotates adjacent pairs in the "
                "first half of each head"
            )
        if self.pre_seq_len is not None and self.pre_seq_len <= 0:
            raise ValueError(f"pre_seq_len must be a positive integer or None, got {self.pre_seq_len}")


__all__ = ["ChatGLM3Config"]
