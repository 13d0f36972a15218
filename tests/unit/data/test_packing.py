"""data.packing: packed rows give exactly the loss of the examples trained one by one (transformers builds the
block-diagonal mask from restarting position_ids), and the rows themselves are well formed."""

from __future__ import annotations

import random

import pytest
import torch

from glmtune.data.packing import PackedExample, collate_packed, pack, packing_supported
from glmtune.data.templates import IGNORE_INDEX, EncodedConversation
from tests.tiny import packing_llama, tiny_chatglm3

VOCAB = 64


def examples(count: int, seed: int = 0) -> list[EncodedConversation]:
    """Random examples whose prompt part (a random prefix) is not learned."""
    rng = random.Random(seed)
    result = []
    for _ in range(count):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.randint(2, 20))]
        prompt = rng.randint(1, len(ids) - 1)
        result.append(EncodedConversation(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return result


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over learned tokens, with the model's shift (logits at t predict labels[t + 1])."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_loss_equals_the_sum_of_unpacked_losses(attn_implementation):
    model = packing_llama(attn_implementation)
    data = examples(12)
    rows = pack(data, max_seq_len=40)
    assert len(rows) < len(data) and sum(len(r.lengths) for r in rows) == len(data)
    with torch.no_grad():
        expected = sum(
            summed_loss(
                model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits,
                torch.tensor([e.labels]),
            )
            for e in data
        )
        batch = collate_packed(rows, pad_id=0)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        packed = summed_loss(model(**inputs).logits, batch["labels"])
        # controls: positions that do not restart, or a cache (the config's default use_cache=True makes
        # the model create one), and the examples attend to each other
        positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        leaky = summed_loss(model(**dict(inputs, position_ids=positions)).logits, batch["labels"])
        cached = summed_loss(model(**dict(inputs, use_cache=True)).logits, batch["labels"])
    assert torch.allclose(packed, expected, rtol=0, atol=1e-5), (packed.item(), expected.item())
    assert abs(leaky.item() - expected.item()) > 1e-3 and abs(cached.item() - expected.item()) > 1e-3
    # the model's own loss (mean over learned tokens, computed in float32 by transformers) agrees
    own = model(**batch).loss.double()
    learned = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in data)
    assert torch.allclose(own * learned, expected, rtol=1e-6, atol=0)


def test_rows_restart_positions_and_never_learn_across_examples():
    data = [
        EncodedConversation([1, 2, 3], [1, 2, 3]),
        EncodedConversation([4, 5], [4, 5]),
        EncodedConversation([], [], True, True),
    ]
    (row,) = pack(data, max_seq_len=5)
    assert row == PackedExample(
        [1, 2, 3, 4, 5], [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5], [0, 1, 2, 0, 1], [3, 2]
    )
    rows = pack(examples(50), max_seq_len=24)
    assert all(len(r.input_ids) <= 24 for r in rows)
    assert sorted(n for r in rows for n in r.lengths) == sorted(len(e.input_ids) for e in examples(50))
    assert rows == pack(examples(50), max_seq_len=24)  # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        pack(data, max_seq_len=2)
    batch = collate_packed([row, PackedExample([7], [7], [0], [1])], pad_id=0)
    assert batch["position_ids"][1].tolist() == [0, 0, 1, 2, 3]  # padding is a block of its own
    assert batch["labels"][1].tolist() == [7] + [IGNORE_INDEX] * 4
    assert "attention_mask" not in batch and batch["use_cache"] is False


def test_packing_supported_on_a_llama():
    assert packing_supported(packing_llama("sdpa").float())


def test_native_chatglm3_does_not_keep_packed_examples_apart():
    """ChatGLM3's own attention does not read packed positions: packing must stay off for it (for now)."""
    assert not packing_supported(tiny_chatglm3())
