"""Summaries a person can read, end to end on the tiny Llama: one table of counts per split that agrees in the
console, data_summary.json and the metrics' ``n``; the untuned model's evaluation with its own bars; config.yaml
with absolute data paths and no dataset a file overrode; ``glmtune eval/predict`` reading files as training did
(``data.columns``, GBK CSV); ``glmtune eval --data`` reporting a classification run's loss."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from glmtune.cli import main
from tests.helpers import NEGATIVE, POSITIVE, review, sft_config, tiny_config, train


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def qa_rows(n: int, long: int = 0, seed: int = 0) -> list[dict]:
    """alpaca rows under the user's own column names (question/answer); ``long`` of them too long for 48 tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = rng.choice(POSITIVE if i % 2 == 0 else NEGATIVE)
        rows.append({"question": "这个" + word + str(i), "answer": "很好。" if i % 2 == 0 else "很差。"})
    rows += [{"question": "这个东西" * 20 + str(i), "answer": "很好。"} for i in range(long)]
    return rows


def table(out: str) -> dict[str, list[str]]:
    """The counts table's rows by split, from the console."""
    lines = out.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.split() == ["split", "read", "kept", "truncated", "dropped", "used"]
    )
    return {line.split()[0]: line.split()[1:] for line in lines[start + 1 : start + 4]}


@pytest.mark.usefixtures("reset_accelerate")
def test_sft_counts_agree_everywhere_and_the_run_folder_works_from_elsewhere(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "train.csv", qa_rows(30, long=4))
    write_csv(tmp_path / "validation.csv", qa_rows(3, long=1, seed=1))
    data = {
        "dataset": "chatterbot-zh",  # overridden by the file: config.yaml must not keep it
        "train_file": "train.csv",
        "validation_file": "validation.csv",
        "columns": {"instruction": "question", "output": "answer"},
        "validation_size": 0,
        "test_size": 6,
    }
    run = train(tmp_path, sft_config(tiny_model_dir, data))
    captured = capsys.readouterr()
    rows = table(captured.out)
    assert rows["train"][:2] == ["28", "28"] and rows["validation"] == ["4", "4", "0", "1", "3"]
    assert "dropped: longer than train.max_seq_len=48 even without earlier rounds" in captured.out
    assert "(truncated, dropped)" not in captured.out and "{'train'" not in captured.out, "no raw dicts"
    assert "before: validation (loss)" in captured.err and "before: validation (replies)" in captured.err

    summary = json.loads((run / "data_summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("train", "validation", "test"):
        counts = summary[split]["counts"]
        assert [str(counts[k]) for k in ("read", "kept", "truncated", "dropped", "used")] == rows[split]
    assert (
        metrics["validation"]["n"] == metrics["before"]["n"] == summary["validation"]["counts"]["used"] == 3
    )
    assert metrics["test"]["n"] == summary["test"]["counts"]["used"]

    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert recorded["dataset"] is None
    assert recorded["train_file"] == str(tmp_path / "train.csv")
    assert recorded["validation_file"] == str(tmp_path / "validation.csv")

    # From elsewhere, files in the run's own column names and in GBK, as Excel on Chinese Windows saves them.
    monkeypatch.chdir("/")
    eval_file = write_csv(tmp_path / "more.csv", qa_rows(5, long=1, seed=2), encoding="gbk")
    main(["eval", str(run), "--data", str(eval_file)])
    out = capsys.readouterr().out
    assert table(out.replace("more ", "train ", 1))["train"] == ["6", "6", "0", "1", "5"]
    assert json.loads((run / "eval" / "more" / "metrics.json").read_text())["n"] == 5
    prompts = write_csv(tmp_path / "prompts.csv", [{"question": "这个好"}, {"question": "这个差"}], "gbk")
    main(["predict", str(run), "--input", str(prompts)])
    replies = (tmp_path / "prompts.predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["prompt"] for line in replies] == ["这个好", "这个差"]


@pytest.mark.usefixtures("reset_accelerate")
def test_classification_eval_reports_the_loss_of_the_true_labels(tmp_path, tiny_model_dir, capsys):
    from sklearn.metrics import log_loss

    rng = random.Random(0)
    rows = [{"review": review(rng, i % 2 == 0), "stars": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
    train_file = write_csv(tmp_path / "reviews.csv", rows)
    cfg = tiny_config(tiny_model_dir, train_file, data={"columns": {"text": "review", "label": "stars"}})
    run = train(tmp_path, cfg)
    out = capsys.readouterr().out
    assert table(out)["train"] == ["64", "64", "0", "0", "64"] and table(out)["test"][-1] == "16"
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 16

    held_out = write_csv(tmp_path / "held_out.csv", rows[:20], encoding="gbk")
    main(["eval", str(run), "--data", str(held_out)])
    metrics = json.loads((run / "eval" / "held_out" / "metrics.json").read_text())
    predictions = [
        json.loads(line)
        for line in (run / "eval" / "held_out" / "predictions.jsonl").read_text().splitlines()
    ]
    labels = ["neg", "pos"]
    probs = np.array([[p["probs"][label] for label in labels] for p in predictions])  # [n, 2]
    probs /= probs.sum(axis=1, keepdims=True)  # float32 softmax rows, to sklearn's tolerance
    gold = [labels.index(p["gold"]) for p in predictions]
    assert metrics["n"] == 20
    assert metrics["loss"] == pytest.approx(log_loss(gold, probs, labels=[0, 1]), rel=1e-5)
    assert "loss" in capsys.readouterr().out
