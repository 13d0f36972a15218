"""Preference losses against TRL 1.16 (pinned in the dev extra, tests only): on a tiny random Llama, identical data
and fp32, glmtune's DPO, IPO, KTO (through TRL's own trainers: its tokenization, collator and ``compute_loss``),
ORPO and SimPO (TRL's loss functions on TRL's log-probabilities) give the same token ids, losses, rewards and
gradients (atol 1e-5), for a one-turn and a multi-turn (system + earlier rounds) prompt.

The chat template ends a turn with ``<|im_end|>`` and no newline after it: TRL scores everything after the prompt
(a newline after the end-of-turn token too), glmtune scores what SFT's label masks learn (up to the end-of-turn
token), and the two agree exactly on such a template.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from glmtune.core import config as config_mod
from glmtune.data.preference import collate_preference, encode_example, examples_from_records
from glmtune.data.templates import resolve_template
from glmtune.models.causal import CausalLM
from glmtune.train.techniques import preference as losses
from tests.helpers import SPECIALS, bpe_tokenizer
from tests.tiny import tiny_llama_config

trl = pytest.importorskip("trl")

ATOL = 1e-5
TEMPLATE = (  # chatml without the newline after <|im_end|>
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PLAIN = [{"role": "user", "content": "你好，今天天气怎么样？"}]
MULTI = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]
PAIRS = [
    {"prompt": PLAIN, "chosen": [{"role": "assistant", "content": "今天天气很好。"}], "rejected": "不客气！"},
    {
        "prompt": MULTI,
        "chosen": "It is 6, of course.",
        "rejected": [{"role": "assistant", "content": "谢谢"}],
    },
    {"prompt": PLAIN, "chosen": "北京晴，20度。", "rejected": "Hello"},
]


def _assistant(value):
    return value if isinstance(value, list) else [{"role": "assistant", "content": value}]


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer("chatml", TEMPLATE)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    eos = tokenizer.convert_tokens_to_ids(SPECIALS["chatml"][2])
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # a random, not a zero-initialised, model: every weight matters to the gradients
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def _task(loss: str, **preference):
    cfg = config_mod.from_dict(
        {"task": "preference", "data": {"template": "auto"}, "preference": {"loss": loss, **preference}},
        "test",
    )
    from glmtune.train.tasks.preference import Preference

    return Preference(cfg)


class _NoCast:
    def __call__(self):
        return torch.autocast("cpu", enabled=False)


def _batch(tokenizer, records, kto: bool = False):
    """glmtune's encoding and batch of ``records`` (KTO: each prompt's KL row takes the previous completion)."""
    fmt = resolve_template(tokenizer, "auto")
    examples = examples_from_records([{**r, "_line": i + 1} for i, r in enumerate(records)], "pairs.jsonl")
    encoded = [encode_example(tokenizer, fmt, e, 128) for e in examples]
    if kto:
        encoded = [e._replace(kl=encoded[i - 1].responses[0]) for i, e in enumerate(encoded)]
    return collate_preference(list(enumerate(encoded)), tokenizer.pad_token_id, 128)


def _rows(input_ids, attention_mask):
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


def _scored(input_ids, mask):
    return [ids[m.bool()].tolist() for ids, m in zip(input_ids, mask)]


def _grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_grads_equal(ours, theirs):
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=ATOL, rtol=0, msg=name)


def _ours(task, model, batch, reference=None):
    """glmtune's loss on ``batch`` (the reference precomputed from ``reference``), its rewards, its gradients."""
    policy = CausalLM(copy.deepcopy(model)).train()
    task.paired = task.cfg.preference.loss != "kto"
    task.adapter_off = False
    if reference is not None:
        loader = [batch]
        fake = SimpleNamespace(dataset=range(len(batch["index"])))
        task.reference = {"train": _precompute(task, CausalLM(copy.deepcopy(reference)), loader, fake)}
    accelerator = SimpleNamespace(autocast=_NoCast(), unwrap_model=lambda m: m)
    out, chosen_logps, rejected_logps = task.compute(policy, batch, "train", accelerator)
    out.loss.backward()
    grads = {name.removeprefix("backbone."): g for name, g in _grads(policy).items()}
    return out, chosen_logps, rejected_logps, grads


@torch.no_grad()
def _precompute(task, model, loader, shape):
    out = torch.zeros(len(shape.dataset), 2)
    for batch in loader:
        first, second = task._rows_logps(model.eval(), batch, _NoCast())
        out[batch["index"]] = torch.stack((first, second), dim=1)
    return out


def _trl_trainer(kind, tokenizer, model, rows, tmp_path, **args):
    from datasets import Dataset

    config_class, trainer_class = {
        "dpo": (trl.DPOConfig, trl.DPOTrainer),
        "kto": (trl.KTOConfig, trl.KTOTrainer),
    }[kind]
    config = config_class(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(rows),
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        max_length=None,
        **args,
    )
    return trainer_class(
        model=copy.deepcopy(model).train(),
        ref_model=copy.deepcopy(model).eval(),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def _trl_step(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return batch, loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}, _grads(trainer.model)


def _trl_rows(pairs):
    return [
        {"prompt": p["prompt"], "chosen": _assistant(p["chosen"]), "rejected": _assistant(p["rejected"])}
        for p in pairs
    ]


@pytest.mark.parametrize("loss, trl_loss", [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_equal_trl(loss, trl_loss, tokenizer, model, tmp_path, reset_accelerate):
    trainer = _trl_trainer(
        "dpo", tokenizer, model, _trl_rows(PAIRS), tmp_path, beta=0.3, loss_type=[trl_loss]
    )
    theirs, their_loss, logged, their_grads = _trl_step(trainer)
    batch = _batch(tokenizer, PAIRS)
    # identical rows: chosen rows then rejected rows, the same tokens and the same scored tokens
    assert _rows(batch["input_ids"], batch["attention_mask"]) == _rows(
        theirs["input_ids"], theirs["attention_mask"]
    )
    assert _scored(batch["input_ids"], batch["labels"] != -100) == _scored(
        theirs["input_ids"], theirs["completion_mask"]
    )
    task = _task(loss, beta=0.3)
    out, chosen_logps, rejected_logps, grads = _ours(task, model, batch, reference=model)
    torch.testing.assert_close(out.loss, their_loss.detach(), atol=ATOL, rtol=0)
    assert out.chosen.mean().item() == pytest.approx(logged["rewards/chosen"], abs=ATOL)
    assert out.rejected.mean().item() == pytest.approx(logged["rewards/rejected"], abs=ATOL)
    assert chosen_logps.mean().item() == pytest.approx(logged["logps/chosen"], abs=ATOL)
    assert rejected_logps.mean().item() == pytest.approx(logged["logps/rejected"], abs=ATOL)
    metrics = losses.metrics(out, chosen_logps, rejected_logps)
    assert metrics["reward_accuracy"] == pytest.approx(logged["rewards/accuracies"], abs=ATOL)
    assert metrics["reward_margin"] == pytest.approx(logged["rewards/margins"], abs=ATOL)
    _assert_grads_equal(grads, their_grads)


def test_kto_equals_trl(tokenizer, model, tmp_path, reset_accelerate):
    records = [
        {"prompt": p["prompt"], "completion": _assistant(p[side]), "label": side == "chosen"}
        for p in PAIRS
        for side in ("chosen", "rejected")
    ][:5]  # an odd count: unequal numbers of desirable and undesirable examples
    trainer = _trl_trainer(
        "kto", tokenizer, model, records, tmp_path, beta=0.2, desirable_weight=1.3, undesirable_weight=0.7
    )
    theirs, their_loss, logged, their_grads = _trl_step(trainer)
    batch = _batch(tokenizer, records, kto=True)
    assert _rows(batch["input_ids"], batch["attention_mask"]) == _rows(
        theirs["input_ids"], theirs["attention_mask"]
    )
    assert _rows(batch["kl_input_ids"], batch["kl_attention_mask"]) == _rows(
        theirs["KL_input_ids"], theirs["KL_attention_mask"]
    )
    task = _task("kto", beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    out, chosen_logps, rejected_logps, grads = _ours(task, model, batch, reference=model)
    torch.testing.assert_close(out.loss, their_loss.detach(), atol=ATOL, rtol=0)
    assert out.chosen.mean().item() == pytest.approx(logged["rewards/chosen"], abs=ATOL)
    assert out.rejected.mean().item() == pytest.approx(logged["rewards/rejected"], abs=ATOL)
    assert chosen_logps.mean().item() == pytest.approx(logged["logps/chosen"], abs=ATOL)
    _assert_grads_equal(grads, their_grads)


def _trl_logps(model, batch, average):
    """TRL's log-probabilities (its ``get_batch_logps``) of glmtune's batch, with grad, and the chosen NLL."""
    from trl.experimental.orpo import ORPOTrainer

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = ORPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=average)
    pairs = len(batch["index"])
    # the chosen rows' token-mean cross-entropy, on the rows' scored tokens (glmtune's ORPO NLL; see losses.orpo)
    nll = F.cross_entropy(
        logits[:pairs, :-1].flatten(0, 1), batch["labels"][:pairs, 1:].flatten(), ignore_index=-100
    )
    return logps[:pairs], logps[pairs:], nll


@pytest.mark.parametrize("records", [PAIRS, PAIRS[1:2]], ids=["batch", "multi-turn"])
def test_orpo_equals_trl(records, tokenizer, model):
    from trl.experimental.orpo import ORPOTrainer

    batch = _batch(tokenizer, records)
    theirs_model = copy.deepcopy(model).train()
    chosen, rejected, nll = _trl_logps(theirs_model, batch, average=True)
    trl_self = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device="cpu"))
    ratio_losses, trl_chosen, trl_rejected, _, _ = ORPOTrainer.odds_ratio_loss(trl_self, chosen, rejected)
    their_loss = nll - ratio_losses.mean()
    their_loss.backward()
    out, _, _, grads = _ours(_task("orpo", beta=0.25), model, batch)
    torch.testing.assert_close(out.loss, their_loss.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.chosen, trl_chosen, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected, trl_rejected, atol=ATOL, rtol=0)
    _assert_grads_equal(grads, _grads(theirs_model))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("records", [PAIRS, PAIRS[1:2]], ids=["batch", "multi-turn"])
def test_simpo_equals_trl(records, smoothing, tokenizer, model):
    from trl.experimental.cpo import CPOTrainer

    batch = _batch(tokenizer, records)
    theirs_model = copy.deepcopy(model).train()
    chosen, rejected, _ = _trl_logps(theirs_model, batch, average=True)
    trl_self = SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=0.8,
        beta=2.0,
        label_smoothing=smoothing,
        accelerator=SimpleNamespace(device="cpu"),
    )
    trl_losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(
        trl_self, chosen, rejected
    )  # cpo_alpha 0: no NLL
    trl_losses.mean().backward()
    out, _, _, grads = _ours(
        _task("simpo", beta=2.0, simpo_gamma=0.8, label_smoothing=smoothing), model, batch
    )
    torch.testing.assert_close(out.loss, trl_losses.mean().detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.chosen, trl_chosen, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected, trl_rejected, atol=ATOL, rtol=0)
    _assert_grads_equal(grads, _grads(theirs_model))


def test_dpo_label_smoothing_is_soft_target_cross_entropy():
    """Conservative DPO: the binary cross-entropy of β·Δ against the target 1 − ε (torch's, independently)."""
    torch.manual_seed(0)
    chosen, rejected, ref_chosen, ref_rejected = (torch.randn(6) * 5 for _ in range(4))
    out = losses.dpo(chosen, rejected, ref_chosen, ref_rejected, beta=0.3, label_smoothing=0.15)
    logits = 0.3 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    expected = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 0.85))
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
