"""Exact parity with the official modeling code on chatglm.cpp's golden tiny models (ARCHITECTURE.md section 9).

The weights go through the same path as a real checkpoint: a state dict under the official keys, loaded with
strict=True. The data covers head dim 4 only (one RoPE frequency), batch 1, no padding, no logits; the
differential tests against diffusers cover the rest.
"""

import numpy as np
import pytest
import torch

from glmtune.models.chatglm3 import ChatGLM3Config, ChatGLM3ForCausalLM
from tests.tiny import require_shared

GOLDEN_CONFIG = dict(
    num_layers=1,
    padded_vocab_size=5,
    hidden_size=32,
    ffn_hidden_size=48,
    kv_channels=4,
    num_attention_heads=8,
    multi_query_attention=True,
    multi_query_group_num=2,
    seq_length=8,
    add_qkv_bias=True,
)
LAYER = "transformer.encoder.layers.0."
# (state-dict key, shape) in file order; all float32.
WEIGHTS = [
    ("transformer.embedding.word_embeddings.weight", (5, 32)),
    (LAYER + "input_layernorm.weight", (32,)),
    (LAYER + "self_attention.query_key_value.weight", (48, 32)),
    (LAYER + "self_attention.query_key_value.bias", (48,)),
    (LAYER + "self_attention.dense.weight", (32, 32)),
    (LAYER + "post_attention_layernorm.weight", (32,)),
    (LAYER + "mlp.dense_h_to_4h.weight", (96, 32)),
    (LAYER + "mlp.dense_4h_to_h.weight", (32, 48)),
    ("transformer.encoder.final_layernorm.weight", (32,)),
]


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def read(self, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape))
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset).reshape(shape)
        self.offset += array.nbytes
        return array.copy()


def _load_golden(name: str, pre_seq_len: int | None):
    reader = _Reader(require_shared("golden", name).read_bytes())
    config = ChatGLM3Config(**GOLDEN_CONFIG, pre_seq_len=pre_seq_len)
    state = {}
    if pre_seq_len:
        # chatglm.cpp stores prefix_encoder(arange(pre)).half().view(pre, 2L, G, D).permute(1, 2, 0, 3).
        cache = torch.from_numpy(reader.read("<f2", (2, 2, pre_seq_len, 4))).float()  # [2L, G, pre, D]
        state["transformer.prefix_encoder.embedding.weight"] = cache.permute(2, 0, 1, 3).reshape(
            pre_seq_len, -1
        )
    for key, shape in WEIGHTS:
        state[key] = torch.from_numpy(reader.read("<f4", shape))
    steps = []
    for length, expected_shape in ((3, (3, 1, 32)), (1, (32,)), (1, (32,))):
        ids = torch.from_numpy(reader.read("<i4", (length,))).long()
        expected = torch.from_numpy(reader.read("<f4", expected_shape)).reshape(length, 32)
        steps.append((ids, expected))
    assert reader.offset == len(reader.data), "file layout not fully consumed"
    # Not in the data: the LM head (logits are not checked) and the RoPE buffer (recomputed anyway).
    state["transformer.output_layer.weight"] = torch.zeros(5, 32)
    state["transformer.rotary_pos_emb.inv_freq"] = torch.tensor([1.0])
    model = ChatGLM3ForCausalLM(config).eval()
    model.load_state_dict(state, strict=True)
    return model, steps


@pytest.mark.parametrize(
    ("name", "pre_seq_len", "atol"),
    [("glm3_model.data", None, 1e-5), ("glm3_ptuning_v2_model.data", 5, 3e-4)],
)
def test_golden_prefill_and_cached_decode(name, pre_seq_len, atol):
    model, steps = _load_golden(name, pre_seq_len)
    cache, position = None, 0
    with torch.no_grad():
        for ids, expected in steps:
            positions = torch.arange(position, position + len(ids))[None]
            out = model.transformer(ids[None], position_ids=positions, past_key_values=cache, use_cache=True)
            cache, position = out.past_key_values, position + len(ids)
            torch.testing.assert_close(out.last_hidden_state[0], expected, atol=atol, rtol=0)
    # The cache holds the prefix plus every token.
    assert cache.get_seq_length() == (pre_seq_len or 0) + 5
