"""The SFT loss: next-token cross-entropy on label tokens, a token mean, equal to transformers' own loss."""

from __future__ import annotations

import torch

from glmtune.models.causal import IGNORE_INDEX, accepts_learned_mask, learned_mask, token_losses


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


def _random_batch(vocab_size: int):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, vocab_size, (3, 9), generator=generator)  # [batch, seq]
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[1, 7:] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # a row with nothing learned
    return input_ids, labels


def _masked_equals_full(causal) -> None:
    """Loss and gradients through the learned-positions-only LM head equal those through full logits."""
    input_ids, labels = _random_batch(causal.config.vocab_size)
    grads = []
    for use_mask in (False, True):
        causal.zero_grad()
        kwargs = {"logits_to_keep": learned_mask(labels)} if use_mask else {}
        logits = causal(input_ids=input_ids, **kwargs).logits
        sums, counts = token_losses(logits, labels, 0.1, kwargs.get("logits_to_keep"))
        (sums.sum() / counts.sum()).backward()
        grads.append(
            (
                [s.item() for s in sums],
                counts.tolist(),
                {n: p.grad.clone() for n, p in causal.named_parameters() if p.grad is not None},
            )
        )
    (full_sums, full_counts, full_grads), (sums, counts, masked_grads) = grads
    assert counts == full_counts and counts[2] == 0
    assert torch.allclose(torch.tensor(sums), torch.tensor(full_sums), atol=1e-5)
    assert full_grads.keys() == masked_grads.keys() and full_grads
    for name, grad in full_grads.items():
        assert torch.allclose(grad, masked_grads[name], atol=1e-6), name


def test_learned_positions_only_head_equals_full_logits_with_lora(tiny_model_dir):
    from glmtune import methods
    from glmtune.core.config import MethodConfig, ModelConfig
    from glmtune.models.causal import load_language_model

    causal, _ = load_language_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    methods.apply(causal, MethodConfig(name="lora", lora_dropout=0.0))
    assert accepts_learned_mask(causal)
    _masked_equals_full(causal.train())


def test_learned_positions_only_head_equals_full_logits_on_chatglm3():
    from glmtune.models.causal import CausalLM
    from tests.tiny import tiny_chatglm3

    causal = CausalLM(tiny_chatglm3())
    assert accepts_learned_mask(causal)
    _masked_equals_full(causal.train())


def test_prompt_learning_wrappers_get_full_logits(tiny_model_dir):
    """peft prompt tuning prepends virtual tokens, so mask positions would be off: it is not offered the mask."""
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from glmtune.models.causal import CausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2))
    assert not accepts_learned_mask(CausalLM(prompt))
    assert not accepts_learned_mask(torch.nn.Linear(2, 2))
