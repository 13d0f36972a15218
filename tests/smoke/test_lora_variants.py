"""LoRA variants (DoRA, rsLoRA, PiSSA, OLoRA) and LoRA+ through the real CLI on the tiny Llama: each trains (a
2-step run), reloads for predict with the probabilities it wrote at the end of training, resumes to the run an
uninterrupted one ends as, exports merged, and serves (PiSSA/OLoRA, saved as a plain LoRA on the original base,
share that base with the others) with the same logits as the run loaded alone."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
import yaml

from glmtune.cli import main
from tests.helpers import (
    assert_predict_reproduces,
    chat_rows,
    review,
    sft_config,
    tiny_config,
    write_config,
    write_jsonl,
)

VARIANTS = ("dora", "rslora", "pissa", "olora")
IDS = torch.randint(4, 60, (2, 9), generator=torch.Generator().manual_seed(0))  # [batch, seq]


def _fresh_train(tmp_path, cfg: dict, name: str = "run"):
    """``glmtune train`` in process into ``tmp_path/name`` (a served run's name is its folder's)."""
    from glmtune.train import reset_process_state

    reset_process_state()
    try:
        main(["train", str(write_config(tmp_path, cfg)), "--output", str(tmp_path / name)])
    finally:
        reset_process_state()
    return tmp_path / name


def _reviews(path):
    rng = random.Random(0)
    rows = [{"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_model_dir):
    """One 2-step LoRA sft run per variant (PiSSA with LoRA+ too)."""
    data = write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", chat_rows())
    runs = {}
    for variant in VARIANTS:
        train_cfg = {"loraplus_lr_ratio": 4.0} if variant == "pissa" else {}
        cfg = sft_config(
            tiny_model_dir,
            {"train_file": str(data)},
            method={"lora_variant": variant},
            train=train_cfg,
            eval={"generation": "none"},  # loss only: these runs are for loading back, not for their replies
        )
        runs[variant] = _fresh_train(tmp_path_factory.mktemp(variant), cfg, name=f"sft-{variant}")
    return runs


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits  # [batch, seq, vocab]


@pytest.mark.parametrize("variant", VARIANTS)
def test_classification_run_trains_and_predict_gives_its_probabilities(
    tmp_path, tiny_model_dir, variant, capsys
):
    """``glmtune predict`` (the untouched base + adapter/) gives the probabilities the training model (for
    PiSSA/OLoRA: the residual base + their adapter) wrote at test time."""
    cfg = tiny_config(tiny_model_dir, _reviews(tmp_path / "reviews.jsonl"), method={"lora_variant": variant})
    run = _fresh_train(tmp_path, cfg)
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["lora_variant"] == variant
    assert "changes the base weights" not in capsys.readouterr().err, (
        "peft's own conversion warning is filtered"
    )
    assert_predict_reproduces(run, capsys, atol=1e-5)


@pytest.mark.parametrize(("variant", "ratio"), [("pissa", 4.0), ("dora", None)])
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, tiny_model_dir, variant, ratio):
    """PiSSA re-runs its (deterministic) init before loading the checkpoint's A and B; DoRA's magnitudes are in
    the checkpoint; LoRA+'s groups are rebuilt the same way."""
    cfg = tiny_config(
        tiny_model_dir,
        _reviews(tmp_path / "reviews.jsonl"),
        method={"lora_variant": variant, "lora_dropout": 0.1},
        train={"max_steps": 4, "save_steps": 2, "eval_steps": 2, "loraplus_lr_ratio": ratio},
    )
    straight = _fresh_train(tmp_path, cfg)
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints" / "step-0000004")
    for name in ("metrics.json", "predictions.jsonl"):
        (killed / name).unlink()
    from glmtune.train import reset_process_state

    reset_process_state()
    main(["train", "--resume", str(killed)])
    reset_process_state()
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (straight, killed))
    assert a == b
    assert (straight / "predictions.jsonl").read_text() == (killed / "predictions.jsonl").read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_merge_gives_the_run_logits(tmp_path, sft_runs, variant):
    from transformers import AutoModelForCausalLM

    from glmtune.infer.lm import load_run

    run = sft_runs[variant]
    main(["export", str(run), "--out", str(tmp_path / "export"), "--merge"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert torch.allclose(_logits(merged), _logits(load_run(run).model.backbone), atol=2e-5)


def test_variant_runs_share_one_served_base(sft_runs):
    """Every variant's run serves over one copy of the untouched base (PiSSA/OLoRA too: their adapter is a plain
    LoRA on it); with each run's adapter active, the logits are those of the run loaded alone."""
    from glmtune.infer.lm import load_run
    from glmtune.infer.serve.registry import load_models

    served = load_models([str(sft_runs[v]) for v in VARIANTS])
    models = [served[sft_runs[v].name] for v in VARIANTS]
    shared = models[0].lm.model.backbone
    assert all(m.lm.model.backbone is shared for m in models), "one copy of the base"
    for variant, model in zip(VARIANTS, models, strict=True):
        shared.set_adapter(model.adapter)
        alone = load_run(sft_runs[variant]).model.backbone
        assert torch.allclose(_logits(shared), _logits(alone), atol=2e-5), variant
