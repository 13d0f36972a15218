"""2-step training runs through the real CLI on a tiny random model: run folder, what trained, reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from glmtune.cli import main
from tests.helpers import tiny_config, train


def base_state(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_two_step_run_writes_the_run_folder(tmp_path, tiny_model_dir, sentiment_file, method, capsys):
    cfg = tiny_config(tiny_model_dir, sentiment_file, method={"name": method, "trainable_layers": 1})
    run = train(tmp_path, cfg)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(run), "train prints the run folder as its last line"

    for name in [
        "config.yaml",
        "labels.json",
        "metrics.json",
        "predictions.jsonl",
        "log.jsonl",
        "loss.png",
        "confusion.png",
        "head.safetensors",
        "glmtune.json",
    ]:
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir()), "TensorBoard events"
    assert json.loads((run / "labels.json").read_text()) == ["neg", "pos"]
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test"):
        for key in ("accuracy", "macro_f1", "auc"):
            assert key in metrics[split]
    assert metrics["test"]["n"] == 16
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 16
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["name"] == method

    base = base_state(tiny_model_dir)
    if method == "lora":
        adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero and must have moved"
        assert not (run / "body.safetensors").exists()
    else:
        body = load_file(str(run / "body.safetensors"))
        # body keys are backbone keys ("layers.1...", "norm.weight"); base keys carry the "model." prefix.
        changed = [k for k, v in body.items() if not v.equal(base["model." + k])]
        if method == "freeze":
            assert set(body) == {k for k in body if k.startswith("layers.1.")} | {"norm.weight"}
            assert any(k.startswith("layers.1.") for k in body)
        else:
            assert len(body) == len([k for k in base if k != "lm_head.weight"])
        assert changed, "trained tensors must differ from the base model"


@pytest.mark.usefixtures("reset_accelerate")
def test_predict_reloads_the_run(tmp_path, tiny_model_dir, sentiment_file, capsys):
    run = train(tmp_path, tiny_config(tiny_model_dir, sentiment_file))
    capsys.readouterr()
    main(["predict", str(run), "--text", "质量很好"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["label"] in ("neg", "pos")
    assert abs(sum(result["probs"].values()) - 1) < 1e-4

    main(["predict", str(run), "--input", str(sentiment_file), "--output", str(tmp_path / "p.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 96 and all(r["label"] in ("neg", "pos") for r in rows)

    # The reloaded run reproduces the test predictions written at the end of training.
    written = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    main(["predict", str(run), "--text", written[0]["text"]])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for label, p in written[0]["probs"].items():
        assert again["probs"][label] == pytest.approx(p, abs=1e-4)


@pytest.mark.usefixtures("reset_accelerate")
def test_eval_on_a_labelled_file(tmp_path, tiny_model_dir, sentiment_file, capsys):
    run = train(tmp_path, tiny_config(tiny_model_dir, sentiment_file))
    main(["eval", str(run), "--data", str(sentiment_file)])
    metrics = json.loads((run / "eval" / "reviews" / "metrics.json").read_text())
    assert metrics["n"] == 96 and 0 <= metrics["accuracy"] <= 1
