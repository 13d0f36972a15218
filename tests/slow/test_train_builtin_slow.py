"""Slow: the real default model (built-in Gemma 3 270M) trains a few steps through the CLI and reloads."""

from __future__ import annotations

import json

import pytest

from glmtune.cli import main


@pytest.mark.slow
@pytest.mark.usefixtures("reset_accelerate")
def test_default_model_trains_and_predicts(tmp_path, capsys):
    out = tmp_path / "run"
    main([
        "train", "examples/sentiment.yaml", "--output", str(out),
        "data.max_train_samples=64", "data.max_eval_samples=32", "data.test_size=32", "data.validation_size=32",
        "train.max_steps=4", "train.batch_size=8", "train.eval_steps=4", "train.log_steps=1",
    ])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["test"]["n"] == 32
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if row["split"] == "train"]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3), "zero-init head: the first loss is ln 2"
    assert all(l == l and l < 10 for l in losses), "finite, sane losses"  # noqa: E741

    capsys.readouterr()
    main(["predict", str(out), "--text", "物流很快，质量很好，非常满意"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["probs"]) == {"negative", "positive"}
