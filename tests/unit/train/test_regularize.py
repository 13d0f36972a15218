"""Regularisation and schedules: label smoothing, R-Drop, layer-wise lr decay, polynomial/cosine-with-restarts
schedules (each against a formula written out here), config checks, and a 2-step run per technique."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from glmtune.core import config
from glmtune.core.config import MethodConfig, ModelConfig, TrainConfig
from glmtune.core.errors import UserError
from glmtune.models.causal import token_losses
from glmtune.train.techniques import regularize
from tests.helpers import sft_config, tiny_config, train


def test_symmetric_kl_against_the_definition():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    p, q = a.softmax(-1), b.softmax(-1)
    kl_pq = (p * (p.log() - q.log())).sum(-1).mean()
    kl_qp = (q * (q.log() - p.log())).sum(-1).mean()
    assert regularize.symmetric_kl(a, b).item() == pytest.approx(((kl_pq + kl_qp) / 2).item(), rel=1e-5)
    assert regularize.symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)


def test_rdrop_loss_is_mean_cross_entropy_plus_alpha_kl():
    torch.manual_seed(0)
    a, b, labels = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    ce = (F.cross_entropy(a, labels) + F.cross_entropy(b, labels)) / 2
    got = regularize.rdrop_loss(a, b, labels, alpha=4.0)
    assert got.item() == pytest.approx((ce + 4.0 * regularize.symmetric_kl(a, b)).item(), rel=1e-6)
    assert regularize.rdrop_loss(a, a, labels, alpha=4.0).item() == pytest.approx(
        F.cross_entropy(a, labels).item()
    )


def test_label_smoothing_of_the_token_loss_matches_the_formula():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 6), torch.tensor([[1, 2, -100, 3], [4, -100, 5, 0]])
    eps = 0.2
    sums, counts = token_losses(logits, labels, eps)
    logp = logits[:, :-1].log_softmax(-1)  # predicts labels[:, 1:]
    target = labels[:, 1:]
    keep = target != -100
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    uniform = -logp.mean(-1)  # cross-entropy against the uniform distribution
    expected = (((1 - eps) * nll + eps * uniform) * keep).sum(-1)
    torch.testing.assert_close(sums, expected)
    assert counts.tolist() == [2, 2]


def tiny_model(model_dir, method: str):
    from glmtune import methods
    from glmtune.models.heads import load_classifier

    model, _ = load_classifier(ModelConfig(name_or_path=str(model_dir)), 2)
    methods.apply(model, MethodConfig(name=method, trainable_layers=2))
    return model


@pytest.mark.parametrize("method", ["full", "lora", "freeze"])
def test_layer_wise_lr_decay_param_groups(tiny_model_dir, method):
    from glmtune.train import build_optimizer

    model = tiny_model(tiny_model_dir, method)
    train = TrainConfig(lr=1.0, head_lr=0.5, layer_lr_decay=0.5)
    optimizer = build_optimizer(model, train)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("head."):
            expected = 0.5
        elif ".layers.1." in name:  # the top of 2 layers: full lr
            expected = 1.0
        elif ".layers.0." in name:
            expected = 0.5
        elif "embed_tokens" in name:  # below every layer
            expected = 0.25
        else:  # final norm
            expected = 1.0
        assert lr_of[id(param)] == pytest.approx(expected), name
    n_groups = len(build_optimizer(model, TrainConfig(lr=1.0)).param_groups)
    assert n_groups <= 4, "decay 1 (off): the groups of before (head/body × decay/no decay)"


def test_polynomial_and_cosine_with_restarts_schedules():
    param = torch.nn.Parameter(torch.zeros(1))
    steps = 10

    def lrs(**train) -> list[float]:
        optimizer = torch.optim.SGD([param], lr=1.0)
        scheduler = regularize.make_scheduler(
            optimizer, TrainConfig(warmup_ratio=0.2, lr=1.0, **train), steps
        )
        out = []
        for _ in range(steps):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    warm = 2  # ceil(0.2 * 10)
    poly = lrs(scheduler="polynomial", scheduler_power=2.0)
    for step, lr in enumerate(poly):
        expected = step / warm if step < warm else ((steps - step) / (steps - warm)) ** 2
        assert lr == pytest.approx(expected), step
    assert lrs(scheduler="polynomial", scheduler_power=1.0) == pytest.approx(lrs(scheduler="linear"))
    restarts = lrs(scheduler="cosine_with_restarts", scheduler_cycles=2)
    for step, lr in enumerate(restarts[warm:], warm):
        progress = (step - warm) / (steps - warm)
        expected = 0.5 * (1 + math.cos(math.pi * ((2 * progress) % 1.0)))
        assert lr == pytest.approx(expected), step


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.label_smoothing=1.0", "train.label_smoothing"),
        ("train.rdrop_alpha=-1", "train.rdrop_alpha"),
        ("train.layer_lr_decay=0", "train.layer_lr_decay"),
        ("train.layer_lr_decay=1.5", "train.layer_lr_decay"),
        ("train.scheduler=exponential", "train.scheduler"),
        ("train.scheduler_cycles=0", "train.scheduler_cycles"),
        ("train.adversarial.name=fgsm", "train.adversarial.name"),
        ("train.adversarial.epsilon=0", "train.adversarial.epsilon"),
    ],
)
def test_bad_values_are_user_errors(override, field):
    with pytest.raises(UserError) as error:
        config.load(None, [override])
    assert field in str(error.value)


def test_rdrop_is_for_classification():
    with pytest.raises(UserError, match="train.rdrop_alpha"):
        config.load(None, ["task=sft", "train.rdrop_alpha=1"])


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(
    "train_keys",
    [
        {"label_smoothing": 0.1},
        {"rdrop_alpha": 1.0, "dropout": 0.1},
        {"layer_lr_decay": 0.8},
        {"scheduler": "polynomial", "scheduler_power": 2.0, "warmup_ratio": 0.0},
        {"scheduler": "cosine_with_restarts", "scheduler_cycles": 2},
    ],
)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_step_runs_per_technique(tmp_path, tiny_model_dir, sentiment_file, train_keys, method):
    cfg = tiny_config(
        tiny_model_dir, sentiment_file, method={"name": method}, train={**train_keys, "max_steps": 2}
    )
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2
    saved = json.loads(json.dumps(config.load(run / "config.yaml").to_dict()))
    for key, value in train_keys.items():
        assert saved["train"][key] == value


@pytest.mark.usefixtures("reset_accelerate")
def test_sft_two_steps_with_label_smoothing_and_llrd(tmp_path, tiny_model_dir, chat_file):
    cfg = sft_config(
        tiny_model_dir,
        {"train_file": str(chat_file)},
        train={"label_smoothing": 0.1, "layer_lr_decay": 0.8, "adversarial": {"name": "fgm"}},
    )
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["test"]["loss"])


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(("alpha", "smoothing"), [(0.0, 0.1), (2.0, 0.0), (2.0, 0.1)])
def test_classification_training_loss_wires_smoothing_and_rdrop(alpha, smoothing):
    from accelerate import Accelerator

    from glmtune.train.tasks.classification import Classification

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))

    def model(input_ids, attention_mask):  # [batch, seq] → [batch, 3]: dropout makes two passes differ
        return layer(input_ids.float())

    cfg = config.load(None, [f"train.rdrop_alpha={alpha}", f"train.label_smoothing={smoothing}"])
    batch = {
        "input_ids": torch.randn(5, 4),
        "attention_mask": torch.ones(5, 4),
        "labels": torch.tensor([0, 1, 2, 1, 0]),
    }
    task = Classification(cfg)
    vars(task).setdefault("teacher_logp", None)  # no distillation teacher (set by load_data otherwise)
    torch.manual_seed(1)
    loss, _ = task.loss(model, batch, Accelerator(cpu=True))
    torch.manual_seed(1)
    a = model(batch["input_ids"], None)
    if alpha:
        b = model(batch["input_ids"], None)
        assert not torch.allclose(a, b), "two dropout passes differ"
        expected = regularize.rdrop_loss(a, b, batch["labels"], alpha, smoothing)
    else:
        logp = a.log_softmax(-1)
        nll = -logp.gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
        expected = ((1 - smoothing) * nll + smoothing * -logp.mean(-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
