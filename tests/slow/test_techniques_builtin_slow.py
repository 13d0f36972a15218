"""Slow: the real default model (Gemma 3 270M, whose embedding module scales its output) trains a few steps with
every technique of examples/sentiment-techniques.yaml switched on."""

from __future__ import annotations

import json
import math

import pytest

from glmtune.cli import main


@pytest.mark.slow
@pytest.mark.usefixtures("reset_accelerate")
def test_default_model_with_every_technique(tmp_path):
    out = tmp_path / "run"
    main([
        "train", "examples/sentiment-techniques.yaml", "--output", str(out),
        "model.num_layers=3", "data.max_train_samples=16", "data.max_eval_samples=16", "data.test_size=16",
        "data.validation_size=16", "train.max_steps=3", "train.batch_size=8", "train.max_seq_len=64",
        "train.log_steps=1", "train.adversarial.name=pgd", "train.adversarial.steps=2", "train.rdrop_alpha=1.0",
        "train.warmup_ratio=0",
    ])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["test"]["n"] == 16
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["train"]["total"] > 16, "augmented copies of the 16 training reviews"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if row["split"] == "train"]
    # zero-init head: both R-Drop passes predict uniformly, so the first (clean) loss is ln 2 with smoothing too
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert all(math.isfinite(loss) and loss < 10 for loss in losses)
