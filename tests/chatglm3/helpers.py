"""Shared helpers for the ChatGLM3 tests: where the upstream artifacts live, tiny configs."""

from pathlib import Path

import pytest

# The project root is two levels up; the upstream ChatGLM3 artifacts sit beside it in ../shared/chatglm3.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED = PROJECT_ROOT.parent / "shared" / "chatglm3"
SHARED_REASON = f"upstream ChatGLM3 artifacts not found at {SHARED} (see shared/chatglm3/README.md)"


def require_shared(*relative: str) -> Path:
    """The path of an upstream artifact, or skip the calling test with the reason."""
    path = SHARED.joinpath(*relative)
    if not path.exists():
        pytest.skip(SHARED_REASON)
    return path


# Realistic small shapes: head dim 32 gives 8 RoPE frequencies, so pairing, base and rope_ratio are exercised.
TINY = dict(
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
