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


def tiny_model(seed: int = 0, **overrides):
    """A randomised tiny ChatGLM3ForCausalLM in eval mode."""
    from glmtune.models.chatglm3 import ChatGLM3Config, ChatGLM3ForCausalLM

    return randomize_(ChatGLM3ForCausalLM(ChatGLM3Config(**{**TINY, **overrides})), seed).eval()
