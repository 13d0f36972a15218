"""The SFT loss: next-token cross-entropy on label tokens, a token mean, equal to transformers' own loss."""

from __future__ import annotations

import torch

from glmtune.models.causal import IGNORE_INDEX, token_losses


def test_token_losses_match_the_models_own_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, model.config.vocab_size, (3, 9), generator=generator)  # [batch, seq]
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # a prompt that is not learned
    labels[2, 6:] = IGNORE_INDEX  # and a shorter reply in the last row
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=labels)
    sums, counts = token_losses(out.logits, labels)  # [batch], [batch]
    assert counts.tolist() == [5, 5, 2]  # labels[:, 1:] that are learned
    assert torch.allclose(sums.sum() / counts.sum(), out.loss, atol=1e-6)
    # Per row: the mean over that row's learned tokens.
    row = model(input_ids=input_ids[2:], labels=labels[2:]).loss
    assert torch.allclose(sums[2] / counts[2], row, atol=1e-6)


def test_a_row_with_nothing_learned_counts_zero():
    logits = torch.zeros(2, 4, 5)  # [batch, seq, vocab]
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[0, 2] = 1
    sums, counts = token_losses(logits, labels)
    assert counts.tolist() == [1, 0] and sums[1] == 0
    assert torch.allclose(sums[0], torch.log(torch.tensor(5.0)))
