"""Lose nothing, scale out: a SIGKILLed run resumes to the same result; 2 processes under accelerate launch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.helpers import ENV, tiny_config


def long_config(tmp_path: Path, model_dir: Path, data_file: Path) -> Path:
    # Long enough (hundreds of tiny steps) that the kill lands mid-run; checkpoints every 10 steps.
    cfg = tiny_config(
        model_dir,
        data_file,
        train={"max_steps": 240, "batch_size": 4, "eval_steps": 40, "save_steps": 10, "log_steps": 10},
        method={"name": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1},  # dropout uses the RNG
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def glmtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "glmtune.cli", *args]


def test_sigkilled_run_resumes_to_the_same_metrics(tmp_path, tiny_model_dir, sentiment_file):
    cfg = long_config(tmp_path, tiny_model_dir, sentiment_file)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(
        glmtune("train", str(cfg), "--output", str(straight)), check=True, env=ENV, capture_output=True
    )

    proc = subprocess.Popen(
        glmtune("train", str(cfg), "--output", str(killed)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the kill must land mid-run for this test to mean anything"

    subprocess.run(glmtune("train", "--resume", str(killed)), check=True, env=ENV, capture_output=True)
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 240 and a["best_step"] == b["best_step"]
    for split in ("validation", "test"):
        for key in ("accuracy", "macro_f1", "auc", "loss"):
            assert a[split][key] == b[split][key], (split, key)
    steps = [
        json.loads(line)["step"]
        for line in (killed / "log.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert steps == sorted(set(steps)), "the resumed log has no duplicated steps"
    assert len(list((killed / "checkpoints").iterdir())) <= 2, "old checkpoints are pruned"


def test_two_processes_under_accelerate_launch(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, train={"max_steps": 3, "batch_size": 4})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "glmtune.cli",
        "train",
        str(path),
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16, "gathered once over both shards, no duplicates"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 16
    train_lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in train_lines if x["split"] == "train"] == [1, 2, 3], (
        "logged once, not per process"
    )
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
