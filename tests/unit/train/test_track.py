"""The tracker: log.jsonl, TensorBoard events, plots, resume truncation, and silence when disabled."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from glmtune.core.runs import RunDir
from glmtune.train.track import Tracker, plot_curves, read_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 2000, path


def scalars(run_dir: RunDir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir.tensorboard))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def lines(run_dir: RunDir) -> list[dict]:
    return [json.loads(line) for line in run_dir.log.read_text(encoding="utf-8").splitlines()]


def short_run(run_dir: RunDir, steps: range, *, start_step: int = 0, total: int = 6) -> None:
    with Tracker(run_dir, total, start_step=start_step) as tracker:
        for step in steps:
            tracker.update(step, loss=1.0 / step, lr=1e-3, tokens=100)
            tracker.log(step, "train", loss=1.0 / step, lr=1e-3)
            if step % 2 == 0:
                tracker.log(step, "validation", loss=1.5 / step, accuracy=0.5 + step / 20, auc=None, n=10)


def test_log_jsonl_tensorboard_and_plots(tmp_path, capsys):
    run_dir = RunDir(tmp_path / "run")
    with Tracker(run_dir, 4) as tracker:
        for step in (1, 2, 3, 4):
            tracker.update(step, loss=2.0 - 0.25 * step, lr=1e-4 * step, tokens=256)
            tracker.log(step, "train", loss=torch.tensor(2.0 - 0.25 * step), lr=1e-4 * step)
        tracker.log(4, "validation", loss=np.float32(0.5), accuracy=0.75, macro_f1=0.7, n=8, note="ok")
        tracker.log(4, "test", loss=float("nan"))
        tracker.write("a message")
    tracker.close()  # twice is fine

    rows = lines(run_dir)
    assert [(r["step"], r["split"]) for r in rows] == [
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (4, "train"),
    ] + [
        (4, "validation"),
        (4, "test"),
    ]
    assert list(rows[0]) == ["step", "split", "loss", "lr", "time"]
    assert rows[1]["loss"] == pytest.approx(1.5) and type(rows[1]["loss"]) is float
    assert rows[4] | {"time": 0} == {
        "step": 4,
        "split": "validation",
        "loss": 0.5,
        "accuracy": 0.75,
        "macro_f1": 0.7,
        "n": 8,
        "note": "ok",
        "time": 0,
    }
    assert rows[5]["loss"] is None  # NaN → null: strict JSON
    assert all(isinstance(r["time"], float) for r in rows)

    tb = scalars(run_dir)
    assert tb["train/loss"] == [(1, 1.75), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert [v for _, v in tb["train/lr"]] == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4])
    assert tb["validation/accuracy"] == [(4, 0.75)]
    assert tb["validation/n"] == [(4, 8.0)]
    assert math.isnan(tb["test/loss"][0][1])  # TensorBoard keeps the NaN
    assert "validation/note" not in tb

    assert_png(run_dir.loss_plot)
    assert_png(run_dir.metrics_plot)
    captured = capsys.readouterr()
    assert "a message" in captured.out
    assert "tok/s=" in captured.err and "lr=4.00e-04" in captured.err


def test_plots_with_one_point_or_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(
        json.dumps({"step": 1, "split": "train", "loss": 0.7, "time": 0.0}) + "\n", encoding="utf-8"
    )
    plot_curves(log, tmp_path / "loss.png", tmp_path / "metrics.png")
    assert_png(tmp_path / "loss.png")
    assert_png(tmp_path / "metrics.png")

    plot_curves(tmp_path / "missing.jsonl", tmp_path / "empty_loss.png")  # no history at all
    assert_png(tmp_path / "empty_loss.png")
    assert not (tmp_path / "empty_metrics.png").exists()


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    short_run(run_dir, range(1, 7))  # the first run logged steps 1..6, then was killed
    with run_dir.log.open("a", encoding="utf-8") as log:
        log.write('{"step": 7, "spl')  # torn last line

    tracker = Tracker(run_dir, 6, start_step=3)  # resumed from the step-3 checkpoint
    assert [r["step"] for r in read_log(run_dir.log)] == [1, 2, 2, 3]
    assert tracker._bar.n == 3
    tracker.close()

    short_run(run_dir, range(4, 7), start_step=3)
    steps = [(r["step"], r["split"]) for r in lines(run_dir)]
    assert len(steps) == len(set(steps))  # no step logged twice
    assert [s for s, split in steps if split == "train"] == [1, 2, 3, 4, 5, 6]
    assert [s for s, split in steps if split == "validation"] == [2, 4, 6]
    assert [s for s, _ in scalars(run_dir)["train/loss"]] == [1, 2, 3, 4, 5, 6]  # purged, not duplicated


def test_disabled_tracker_writes_nothing(tmp_path, capsys):
    run_dir = RunDir(tmp_path / "run")
    tracker = Tracker(run_dir, 10, enabled=False, start_step=2)
    tracker.update(1, loss=1.0, lr=1e-3, tokens=10)
    tracker.log(1, "train", loss=1.0)
    tracker.write("hidden")
    tracker.plot()
    tracker.close()
    assert not run_dir.path.exists()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
