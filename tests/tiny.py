"""Every tiny model and tokenizer the tests build: character tokenizers, tiny Llama/Gemma configs and saved
folders, and tiny ChatGLM3s (in memory, randomised; or saved with the real tokenizer from ../shared/chatglm3).

Everything is built from a config: no network, no real weights, milliseconds. Seeds, shapes and vocabularies are
what the tests rely on: where two builders differ in a way a test depends on, they are two named variants here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FILLER, NEGATIVE, POSITIVE, REPO

# --------------------------------------------------------------------------- the upstream ChatGLM3 artifacts

# The upstream ChatGLM3 artifacts (tokenizer.model, config.json, golden files) sit beside the repo.
SHARED = REPO.parent / "shared" / "chatglm3"
SHARED_REASON = f"upstream ChatGLM3 artifacts not found at {SHARED} (see shared/chatglm3/README.md)"


def require_shared(*relative: str) -> Path:
    """The path of an upstream artifact, or skip the calling test with the reason."""
    path = SHARED.joinpath(*relative)
    if not path.exists():
        pytest.skip(SHARED_REASON)
    return path


# --------------------------------------------------------------------------- character tokenizers

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]  # ids 0..3, then the characters


def char_tokenizer_of(chars: list[str], *, bos: bool = True, pad: bool = True, fuse: bool = False):
    """A character-level fast tokenizer over ``chars`` (in that order, after <pad>/<unk>/<bos>/<eos>).

    ``bos`` adds <bos> to every sequence, ``pad`` declares <pad>, ``fuse`` joins decoded pieces without spaces.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(SPECIALS + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    if fuse:
        tok.decoder = decoders.Fuse()
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", **kwargs
    )


def make_tokenizer(vocab_chars: list[str]):
    """A character-level fast tokenizer with <bos>/<eos>/<pad>/<unk>, like a real causal LM's (sorted chars)."""
    return char_tokenizer_of(sorted(set(vocab_chars)))


# The tiny Llama/Gemma configs' vocabulary (test_models_load, test_heads): a-z, then 好坏 (in this order).
VOCAB = list("abcdefghijklmnopqrstuvwxyz好坏")


def char_tokenizer(*, bos: bool = True, pad: bool = True):
    """A character-level fast tokenizer over ``VOCAB``; ``bos`` adds <bos> to every sequence, ``pad`` declares
    <pad>."""
    return char_tokenizer_of(VOCAB, bos=bos, pad=pad)


# What the generation tests say: characters joined back without spaces (a Fuse decoder), no automatic <bos>.
GENERATE_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 ，。你好天气很")


def generate_tokenizer():
    """Characters as tokens, joined back without spaces (a Fuse decoder), with <bos>/<eos>/<pad>."""
    return char_tokenizer_of(GENERATE_CHARS, bos=False, fuse=True)


# --------------------------------------------------------------------------- tiny Llama / Gemma


def tiny_llama_config(**overrides):
    """A 2-layer Llama of width 32 over ``VOCAB`` (tied embeddings, <bos>=2, <eos>=3, <pad>=0)."""
    from transformers import LlamaConfig

    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(VOCAB) + 4,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    return LlamaConfig(**{**values, **overrides})


def tiny_gemma_config(**overrides):
    """A 2-layer Gemma 3 text model of width 32 over ``VOCAB``: one sliding-window and one full-attention layer."""
    from transformers import Gemma3TextConfig

    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        vocab_size=len(VOCAB) + 4,
        max_position_embeddings=64,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return Gemma3TextConfig(**{**values, **overrides})


def save_model(path: Path, config, tokenizer=None, *, bin_weights: bool = False) -> Path:
    """A causal LM of ``config`` (seed 0) saved into ``path`` with ``tokenizer`` (default: ``char_tokenizer()``)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if bin_weights:
        path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    else:
        model.save_pretrained(path)
    (tokenizer or char_tokenizer()).save_pretrained(path)
    return path


def sentiment_tokenizer():
    """The char tokenizer of the sentiment/chat test data (``POSITIVE``/``NEGATIVE``/``FILLER``), a-j, digits."""
    return make_tokenizer(
        sorted({c for w in POSITIVE + NEGATIVE + FILLER for c in w} | set("abcdefghij0123456789 ，。!"))
    )


def save_tiny_llama(path: Path, hidden_size: int = 32, intermediate_size: int = 64) -> Path:
    """Write a seeded 2-layer Llama with the sentiment char tokenizer into ``path`` (the ``tiny_model_dir``)."""
    tokenizer = sentiment_tokenizer()
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_model(path, config, tokenizer)


def tiny_body(config):
    """The bare body (``AutoModel``) of ``config``, seed 0, in eval mode."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def packing_llama(attn_implementation: str, vocab_size: int = 64):
    """A seeded 2-layer Llama over ``vocab_size`` ids in float64, eval mode (config defaults for special ids).

    float64: packed and unpacked runs differ only in summation order, so a comparison can be at 1e-5.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config).double().eval()


def generate_llama(tokenizer):
    """A seeded 2-layer Llama of width 64 over ``tokenizer``'s ids, its matrices drawn at std 0.5 (larger than the
    init std, so the reply depends on the prompt), eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5) if parameter.dim() > 1 else None
    return model


def unseeded_llama():
    """A 1-layer Llama of width 16 over 64 ids, not seeded: for what a model class declares, not what it computes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return LlamaForCausalLM(config)


# --------------------------------------------------------------------------- tiny ChatGLM3 in memory

# Realistic small shapes: head dim 32 gives 8 RoPE frequencies, so pairing, base and rope_ratio are exercised.
TINY_CHATGLM3 = dict(
    num_layers=2,
    padded_vocab_size=256,
    hidden_size=128,
    ffn_hidden_size=160,
    kv_channels=32,
    num_attention_heads=4,
    multi_query_attention=True,
    multi_query_group_num=2,
    seq_length=128,
    add_qkv_bias=True,
    original_rope=True,
)


def randomize_(model, seed: int = 0):
    """Fills a model with weights that make every part of the computation matter (not the tiny init std)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("inv_freq"):
                continue
            if "layernorm" in name:
                values = torch.rand(tensor.shape, generator=generator) + 0.5
            elif "embedding" in name:
                values = torch.randn(tensor.shape, generator=generator)
            else:
                values = torch.randn(tensor.shape, generator=generator) * 0.1
            tensor.copy_(values)
    return model


def tiny_chatglm3(seed: int = 0, **overrides):
    """A randomised tiny ChatGLM3ForCausalLM (``TINY_CHATGLM3`` with ``overrides``) in eval mode."""
    from glmtune.models.chatglm3 import ChatGLM3Config, ChatGLM3ForCausalLM

    return randomize_(ChatGLM3ForCausalLM(ChatGLM3Config(**{**TINY_CHATGLM3, **overrides})), seed).eval()


def unseeded_chatglm3():
    """A ``TINY_CHATGLM3`` ChatGLM3ForCausalLM as constructed (not seeded, not randomised)."""
    from glmtune.models.chatglm3 import ChatGLM3Config, ChatGLM3ForCausalLM

    return ChatGLM3ForCausalLM(ChatGLM3Config(**TINY_CHATGLM3))


# --------------------------------------------------------------------------- tiny ChatGLM3 folders


def save_tiny_chatglm3(path: Path) -> Path:
    """The official config.json shrunk to 2 layers of width 64, random weights (seed 0), the real tokenizer
    (65,024 ids): the ``chatglm3_dir`` fixture. Skips without ../shared/chatglm3."""
    import torch

    from glmtune.models.chatglm3 import ChatGLM3Config, ChatGLM3ForCausalLM

    tokenizer_model = require_shared("tokenizer.model")
    official = json.loads(require_shared("config.json").read_text(encoding="utf-8"))
    shape = dict(num_layers=2, hidden_size=64, kv_channels=16, num_attention_heads=4,
                 multi_query_group_num=2, ffn_hidden_size=128, seq_length=256)  # fmt: skip
    fields = {k: v for k, v in official.items() if k in ChatGLM3Config.__dataclass_fields__}
    torch.manual_seed(0)
    model = ChatGLM3ForCausalLM(ChatGLM3Config(**{**fields, **shape}))
    model.save_pretrained(path)
    (path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    (path / "tokenizer_config.json").write_bytes(require_shared("tokenizer_config.json").read_bytes())
    return path


def save_chatglm3_with_auto_map(path: Path) -> Path:
    """A tiny ChatGLM3 (256 ids, width 64, seed 0) saved like an official folder (auto_map to remote code) with
    the official tokenizer. Skips without ../shared/chatglm3 or glmtune's ChatGLM3 package."""
    import torch

    if not (SHARED / "tokenizer.model").is_file():
        pytest.skip(f"no ChatGLM3 tokenizer at {SHARED}")
    chatglm3 = pytest.importorskip("glmtune.models.chatglm3")
    torch.manual_seed(0)
    config = chatglm3.ChatGLM3Config(
        num_layers=2, padded_vocab_size=256, hidden_size=64, ffn_hidden_size=96, kv_channels=16,
        num_attention_heads=4, multi_query_attention=True, multi_query_group_num=2, seq_length=64,
        add_qkv_bias=True, original_rope=True,
    )  # fmt: skip
    chatglm3.ChatGLM3ForCausalLM(config).save_pretrained(path)
    official = json.loads((SHARED / "config.json").read_text())
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**saved, "auto_map": official["auto_map"]}))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (path / name).write_bytes((SHARED / name).read_bytes())
    return path
