"""Adversarial training (train.adversarial): FGM/PGD gradients against an independent inputs_embeds reference,
embeddings untouched (bit-exact) after each step, and 2-step runs with LoRA/full/freeze, accumulation, bf16."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from glmtune.core.config import AdversarialConfig, MethodConfig, ModelConfig
from glmtune.models.anatomy import input_embeddings
from glmtune.models.heads import load_classifier, pool, position_ids_from_mask
from glmtune.train.techniques import adversarial
from tests.helpers import tiny_config, train


def tiny_classifier(model_dir, method: str):
    torch.manual_seed(0)
    model, tokenizer = load_classifier(ModelConfig(name_or_path=str(model_dir)), 2)
    adversarial_free = MethodConfig(name=method, lora_dropout=0.0, trainable_layers=1)
    from glmtune import methods

    methods.apply(model, adversarial_free)
    with torch.no_grad():  # a zero head passes no gradient to the body: give it weights
        model.head.weight.normal_(0, 1.0)
    model.train()
    batch = tokenizer(["这个很好", "质量差得很失望", "物流慢"], padding=True, return_tensors="pt")
    return model, batch["input_ids"], batch["attention_mask"], torch.tensor([1, 0, 0])


def logits_from_embeds(model, embeds, mask):
    """The classifier's forward from given input embeddings (the reference path: no hook involved)."""
    out = model.backbone(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
    )
    return model.head(model.dropout(pool(out.last_hidden_state, mask, model.pooling)))


def unit(g):
    return g / g.flatten(1).norm(dim=1).view(-1, 1, 1)


def project(r, eps):
    norms = r.flatten(1).norm(dim=1)
    return r * (eps / norms).clamp(max=1.0).view(-1, 1, 1)


def reference_grads(model, ids, mask, labels, cfg: AdversarialConfig) -> dict[str, torch.Tensor]:
    """Clean loss + loss at the FGM/PGD perturbation, written out with inputs_embeds (independent of the hook)."""
    model.zero_grad()
    embed = input_embeddings(model)
    clean = embed(ids)  # [batch, seq, hidden]
    clean.retain_grad() if clean.requires_grad else clean.requires_grad_(True)  # frozen embeddings: a leaf
    F.cross_entropy(logits_from_embeds(model, clean, mask), labels).backward()
    g = clean.grad
    if cfg.name == "fgm":
        r = cfg.epsilon * unit(g)
    else:
        r = project(cfg.alpha * unit(g), cfg.epsilon)
        for _ in range(cfg.steps - 1):
            delta = r.clone().requires_grad_(True)
            loss = F.cross_entropy(logits_from_embeds(model, embed(ids).detach() + delta, mask), labels)
            (g,) = torch.autograd.grad(loss, delta)
            r = project(r + cfg.alpha * unit(g), cfg.epsilon)
    F.cross_entropy(logits_from_embeds(model, embed(ids) + r, mask), labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize(
    "cfg", [AdversarialConfig(name="fgm", epsilon=0.5), AdversarialConfig(name="pgd", epsilon=0.5, alpha=0.2)]
)
def test_adversarial_gradients_match_the_reference_and_embeddings_stay(tiny_model_dir, method, cfg):
    from accelerate import Accelerator

    model, ids, mask, labels = tiny_classifier(tiny_model_dir, method)
    expected = reference_grads(model, ids, mask, labels, cfg)

    model.zero_grad()
    F.cross_entropy(model(ids, mask), labels).backward()
    clean_only = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    accelerator = Accelerator(cpu=True)
    adversary = adversarial.create(model, cfg, accelerator)
    weight = input_embeddings(model).weight
    before = weight.detach().clone()
    with torch.no_grad():
        logits_before = model(ids, mask)
    model.zero_grad()
    loss, tokens = adversary.step(lambda: (F.cross_entropy(model(ids, mask), labels), int(mask.sum())))

    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(expected) and got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.allclose(got[n], clean_only[n]) for n in got), "the adversarial term adds gradient"
    assert loss.item() == pytest.approx(F.cross_entropy(logits_before, labels).item(), rel=1e-5)
    assert tokens == int(mask.sum())
    assert torch.equal(weight.detach(), before), "embedding weights bit-exactly as before"
    assert weight.requires_grad == (method == "full"), "frozen embeddings stay frozen"
    with torch.no_grad():  # the perturbation is gone after the step
        assert torch.equal(model(ids, mask), logits_before)


def test_projection_keeps_each_example_inside_epsilon():
    r = torch.randn(4, 5, 8) * torch.tensor([0.01, 1.0, 10.0, 100.0]).view(-1, 1, 1)
    projected = adversarial._project(r, 1.0)
    norms = projected.flatten(1).norm(dim=1)
    assert torch.all(norms <= 1.0 + 1e-5)
    torch.testing.assert_close(projected[0], r[0])  # already inside: unchanged


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(
    ("method", "adv", "extra"),
    [
        ("lora", {"name": "fgm"}, {}),
        ("freeze", {"name": "fgm"}, {"grad_accum": 2}),
        ("full", {"name": "pgd", "steps": 2}, {}),
        ("lora", {"name": "pgd", "steps": 2}, {"grad_accum": 2, "mixed_precision": "bf16"}),
    ],
)
def test_two_step_adversarial_runs(tmp_path, tiny_model_dir, sentiment_file, method, adv, extra):
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        method={"name": method, "trainable_layers": 1},
        train={"adversarial": adv, **extra},
    )
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["test"]["accuracy"] <= 1
    losses = [
        json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"train"' in line
    ]
    assert losses and all(loss == loss for loss in losses), "finite logged training losses"


@pytest.mark.usefixtures("reset_accelerate")
def test_adversarial_with_gradient_checkpointing(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(
        tiny_model_dir, sentiment_file, train={"adversarial": {"name": "fgm"}, "gradient_checkpointing": True}
    )
    run = train(tmp_path, cfg)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


@pytest.mark.usefixtures("reset_accelerate")
def test_chatglm3_ptuning_composes_with_every_technique(tmp_path, chatglm3_dir, sentiment_file):
    """P-tuning v2 (frozen embeddings, prefix encoder) with FGM, R-Drop, label smoothing, LLRD and augmentation."""
    from safetensors.torch import load_file

    cfg = tiny_config(
        chatglm3_dir,
        sentiment_file,
        method={"name": "ptuning", "pre_seq_len": 4},
        data={"augment": {"n_aug": 1, "delete_prob": 0.2}},
        train={
            "adversarial": {"name": "pgd", "steps": 2},
            "rdrop_alpha": 1.0,
            "dropout": 0.1,
            "label_smoothing": 0.1,
            "layer_lr_decay": 0.8,
            "scheduler": "polynomial",
        },
    )
    run = train(tmp_path, cfg)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    body = load_file(str(run / "body.safetensors"))
    assert body and all("prefix_encoder" in k for k in body), "only the prefix trained; embeddings untouched"


@pytest.mark.usefixtures("reset_accelerate")
def test_resume_with_techniques_gives_the_same_run(tmp_path, tiny_model_dir, sentiment_file):
    """Augmentation (seeded), FGM and R-Drop (dropout draws from the RNG) resume to the same metrics."""
    import shutil

    from glmtune.cli import main

    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        data={"augment": {"n_aug": 1, "swap_prob": 0.2}},
        method={"name": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
        train={
            "max_steps": 4,
            "save_steps": 2,
            "eval_steps": 2,
            "save_total_limit": 3,
            "rdrop_alpha": 1.0,
            "adversarial": {"name": "fgm"},
        },
    )
    straight = train(tmp_path, cfg)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000004")  # as if killed between steps 2 and 4
    (resumed / "metrics.json").unlink()
    main(["train", "--resume", str(resumed)])
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert a["test"]["loss"] == pytest.approx(b["test"]["loss"], rel=1e-6)
    assert a["best_step"] == b["best_step"] and a["test"]["accuracy"] == b["test"]["accuracy"]


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(
    ("method", "prompt"),
    [
        ("lora", {"template": "这个{text}。真", "verbalizer": {"pos": "好", "neg": ["差", "坏"]}}),
        ("prompt_tuning", None),  # peft soft prompt before the input, classification head
    ],
)
def test_prompt_methods_compose_with_the_techniques(tmp_path, tiny_model_dir, sentiment_file, method, prompt):
    sections = {"prompt": prompt} if prompt else {}
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        method={"name": method, "num_virtual_tokens": 4},
        data={"augment": {"n_aug": 1, "delete_prob": 0.2}},
        train={
            "adversarial": {"name": "fgm"},
            "rdrop_alpha": 1.0,
            "dropout": 0.1,
            "label_smoothing": 0.1,
            "layer_lr_decay": 0.8,
        },
        **sections,
    )
    run = train(tmp_path, cfg)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
