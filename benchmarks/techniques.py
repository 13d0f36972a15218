"""Training techniques on the built-in sentiment task in the low-data regime (256 training reviews), measured.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques.py --teacher runs/sentiment [--quick] [--work DIR]

Every row is a normal ``glmtune train`` run folder (``train.run`` on a config built from examples/sentiment.yaml,
the demo recipe: Gemma 3 270M cut to 9 layers, mean pooling, ``freeze`` training the top 3 + the head) under
``--work`` (default runs/techniques/), with ``data.max_train_samples=256``, 4 epochs (64 steps) and the validation
split capped at 250 reviews (it is evaluated after every epoch; the best epoch's weights are tested). One technique
is switched on per row, each row at ``train.seed`` 1, 2 and 3: mean ± sample std of test accuracy, macro-F1 and AUC.

Splits: validation/test depend on ``data.*`` only (data.seed 42, validation 1,000 → capped, test 2,000: the demo's
split), and the 256-review subset depends on ``data.seed`` too, so every row and seed trains on the *same* 256
reviews and is tested on the same 2,000: the spread over seeds is the training randomness (head init, batch order,
dropout, augmentation draws), not the choice of the 256 reviews.

Also: prompt learning (PET verbalizer zero-shot, fine-tuned through the prompt; peft prompt tuning), distillation
from ``--teacher`` (a finished run of the demo recipe on all training reviews: ``glmtune train
examples/sentiment.yaml train.epochs=1 train.eval_steps=300``; without ``--teacher`` that one is trained first, ~8
minutes on 2 cores), ensembles of the
three baseline seeds (glmtune.infer.ensemble), prompt vs head at 64 / 256 / all reviews, and full data (all training
reviews, 1 epoch, seed 1) for the two techniques with the best mean accuracy at 256.

Order: the baseline's 3 seeds (the noise level; the ensembles), then the other rows seed by seed (every row at
seed 1, then seed 2, ...), then dropout/cosine, then full data; ``--deadline HH:MM`` (UTC) starts no run after it,
so a cut-short benchmark still has every row once and a table; run the same command again to fill in the rest.
Each finished run's metrics are cached in benchmarks/results/techniques.json (keyed by run name and its overrides):
a killed script run again skips finished runs; with them the machine of the latest sitting and the precision
(``hardware``, ``precision``; a sitting on another processor keeps the earlier machine under ``hardware_earlier``,
and says so). The table is written to benchmarks/results/techniques.md.
``--quick`` runs every row on tiny splits (a few minutes) into a scratch folder, to check the script end to end.
"""

from __future__ import annotations

import argparse
import calendar
import gc
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.core import config
from glmtune.core.runs import atomic_write_json, atomic_write_text, read_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASE = str(ROOT / "examples" / "sentiment.yaml")
SEEDS = (1, 2, 3)
METRICS = ("accuracy", "macro_f1", "auc")
SPLIT_KEYS = ("dataset", "validation_size", "test_size", "seed")  # what decides the validation/test carving

LOW = [
    "data.max_train_samples=256",
    "train.epochs=4",
    "data.max_eval_samples=250",
    "train.save_total_limit=1",
]
# Tiny settings for --quick: the same rows on 32 training / 24 validation / 32 test reviews, one epoch.
QUICK = [
    "data.validation_size=24",
    "data.test_size=32",
    "data.max_eval_samples=24",
    "data.max_train_samples=32",
    "train.epochs=1",
    "train.batch_size=8",
    "train.save_total_limit=1",
]
# PET-style prompt (examples/sentiment-prompt.yaml): all 18 layers, since the LM head reads the last layer.
PROMPT = [
    "model.num_layers=null",
    'prompt.template="评论：{text}\\n总之，这个东西很"',
    "prompt.verbalizer={positive: 好, negative: 差}",
]
FEW = ["data.max_train_samples=64", "train.batch_size=4"]  # 64 reviews, the same 16 steps per epoch as 256


@dataclass(frozen=True)
class Row:
    name: str  # also the run folder's prefix
    label: str  # in the table
    overrides: tuple[str, ...]
    seeded: bool = True  # False: one run (nothing random in it, e.g. zero-shot)
    full: bool = True  # a candidate for the full-data runs


def rows(teacher: str) -> tuple[list[Row], list[Row]]:
    """The core rows (the issue's table) and the extras run after them when there is time."""
    core = [
        Row("baseline", "baseline (classification head)", ()),
        Row("fgm", "+ FGM (ε 10)", ("train.adversarial.name=fgm", "train.adversarial.epsilon=10")),
        Row(
            "augment",
            "+ augmentation (1 EDA copy per review)",
            ("data.augment.n_aug=1", "data.augment.swap_prob=0.05"),  # synonyms 0.1, deletion 0.1 by default
        ),
        Row("rdrop", "+ R-Drop (α 1, dropout 0.1)", ("train.rdrop_alpha=1.0", "train.dropout=0.1")),
        Row("smooth", "+ label smoothing 0.1", ("train.label_smoothing=0.1",)),
        Row("llrd", "+ layer-wise lr decay 0.8", ("train.layer_lr_decay=0.8",)),
        Row(
            "pgd",
            "+ PGD (ε 10, 2 steps of 5)",
            (
                "train.adversarial.name=pgd",
                "train.adversarial.epsilon=10",
                "train.adversarial.alpha=5",
                "train.adversarial.steps=2",
            ),
        ),
        Row(
            "pgd1",
            "+ PGD (ε 1, 3 steps of 0.3)",
            (
                "train.adversarial.name=pgd",
                "train.adversarial.epsilon=1",
                "train.adversarial.alpha=0.3",
                "train.adversarial.steps=3",
            ),
        ),
        Row(
            "zeroshot",
            "prompt, zero-shot (no training)",
            (*PROMPT, "train.max_steps=0"),
            seeded=False,
            full=False,
        ),
        Row(
            "distill",
            "distillation from the full-data teacher (T 2, α 0.5)",
            (
                f"method.distill.teacher={teacher}",
                "method.distill.temperature=2.0",
                "method.distill.alpha=0.5",
            ),
        ),
        Row("prompt", "prompt, fine-tuned through it (18 layers, top 3 train)", PROMPT),
        Row(
            "ptuning",
            "peft prompt tuning (20 virtual tokens, lr 1e-2) + head",
            ("method.name=prompt_tuning", "train.lr=1.0e-2", "train.head_lr=1.0e-3"),
        ),
    ]
    extras = [  # the 64-review rows first (they run with the core rows; the others after them)
        Row("head64", "head, 64 reviews", FEW, full=False),
        Row("prompt64", "prompt fine-tuned, 64 reviews", (*PROMPT, *FEW), full=False),
        Row("dropout", "+ dropout 0.1", ("train.dropout=0.1",)),
        Row("cosine", "+ cosine schedule", ("train.scheduler=cosine",)),
    ]
    return core, extras


class Bench:
    """Runs rows into ``work``, caching each finished run's metrics in ``results``."""

    def __init__(self, work: Path, results: Path, common: list[str], deadline: float | None) -> None:
        self.work, self.results_path, self.common, self.deadline = work, results, common, deadline
        self.data: dict[str, Any] = read_json(results) if results.is_file() else {}
        self.data.setdefault("runs", {})

    def save(self) -> None:
        atomic_write_json(self.results_path, self.data)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def run(self, name: str, overrides: list[str]) -> dict[str, Any] | None:
        """Train one run folder ``work/name`` (or return its cached result); None if it failed or time is up."""
        from glmtune import train

        full = [*self.common, *overrides]
        cached = self.data["runs"].get(name)
        if cached and cached.get("overrides") == full:
            return cached
        if self.out_of_time():
            print(f"[techniques] skipped {name}: past --deadline", flush=True)
            return None
        print(f"[techniques] {name}: {' '.join(full)}", flush=True)
        start = time.perf_counter()
        try:
            folder = train.run(config.load(BASE, full), self.work / name, overwrite=True)
        except Exception:  # one broken row must not lose the others; its traceback goes to the log
            traceback.print_exc()
            return None
        finally:
            gc.collect()
        seconds = time.perf_counter() - start
        return self.record(name, full, folder, seconds)

    def record(
        self, name: str, overrides: list[str], folder: str | Path, seconds: float | None
    ) -> dict[str, Any]:
        folder = Path(folder)
        metrics = read_json(folder / "metrics.json")
        summary = read_json(folder / "data_summary.json")
        entry = {
            "overrides": overrides,
            "folder": str(folder),
            "seconds": seconds,
            "train_examples": summary["train"]["total"],
            "steps": metrics.get("steps"),
            "best_step": metrics.get("best_step"),
            **{
                split: {k: metrics[split].get(k) for k in (*METRICS, "n")} for split in ("validation", "test")
            },
        }
        self.data["runs"][name] = entry
        self.save()
        t = entry["test"]
        print(f"[techniques] {name}: test accuracy {t['accuracy']:.4f} in {seconds or 0:.0f}s", flush=True)
        return entry

    def ensemble(self, name: str, members: list[str], method: str) -> dict[str, Any] | None:
        """A glmtune ensemble of finished runs (cheap: it reads their prediction files)."""
        from glmtune.infer import ensemble

        folders = [self.data["runs"][m]["folder"] for m in members]
        cached = self.data["runs"].get(name)
        if cached and cached.get("overrides") == folders:
            return cached
        start = time.perf_counter()
        out = ensemble.run(folders, method, self.work / name, overwrite=True)
        metrics = read_json(out / "metrics.json")
        entry = {
            "overrides": folders,
            "folder": str(out),
            "seconds": time.perf_counter() - start,
            **{
                split: {k: metrics[split].get(k) for k in (*METRICS, "n")} for split in ("validation", "test")
            },
        }
        self.data["runs"][name] = entry
        self.save()
        return entry


def next_time(hh_mm: str, now: float) -> float:
    """The first moment at or after ``now`` (epoch seconds) whose UTC clock reads ``hh_mm``: 00:30 given at 23:50
    is 40 minutes away, not already past."""
    hour, minute = map(int, hh_mm.split(":"))
    moment = calendar.timegm(time.gmtime(now)[:3] + (hour, minute, 0))
    return moment if moment >= now else moment + 24 * 3600


def run_name(row: Row, seed: int | None) -> str:
    return row.name if seed is None else f"{row.name}-s{seed}"


def seed_runs(bench: Bench, row: Row, seed: int) -> None:
    if not row.seeded:
        if seed == SEEDS[0]:
            bench.run(row.name, list(row.overrides))
        return
    bench.run(run_name(row, seed), [*row.overrides, f"train.seed={seed}"])


def teacher_run(bench: Bench, given: str | None, quick: bool) -> str:
    """The distillation teacher: ``--teacher`` (checked to share the student's splits) or one trained now."""
    if given is None:  # the demo recipe as it is: all training reviews, 1 epoch (quick: 64 reviews)
        full = [
            "data.max_train_samples=null",
            "train.epochs=1",
            "train.eval_steps=300",
            "data.max_eval_samples=500",
        ]
        if (
            bench.run("teacher", ["train.seed=1", *(["data.max_train_samples=64"] if quick else full)])
            is None
        ):
            sys.exit("the teacher run failed (see above)")
        given = str(bench.work / "teacher")
    elif bench.data["runs"].get("teacher", {}).get("folder") != given:
        bench.record("teacher", ["(--teacher)"], Path(given), None)
    teacher = config.load(Path(given) / "config.yaml")
    student = config.load(BASE, bench.common)
    for key in SPLIT_KEYS:  # another carving would put the student's test reviews into the teacher's training
        if getattr(teacher.data, key) != getattr(student.data, key):
            sys.exit(
                f"--teacher {given}: data.{key} differs from the student's; its training split would overlap"
            )
    return given


def aggregate(bench: Bench, names: list[str]) -> dict[str, Any] | None:
    done = [bench.data["runs"][n] for n in names if n in bench.data["runs"]]
    if not done:
        return None
    agg: dict[str, Any] = {"n": len(done), "train_examples": done[0].get("train_examples")}
    for metric in METRICS:
        values = [r["test"][metric] for r in done]
        agg[metric] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None)
    seconds = [r["seconds"] for r in done if r.get("seconds") is not None]
    agg["seconds"] = statistics.mean(seconds) if seconds else None
    return agg


def cell(value: tuple[float, float | None]) -> str:
    mean, std = value
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def table(bench: Bench, entries: list[tuple[str, list[str]]], baseline: float | None) -> list[str]:
    lines = [
        "| | runs | test accuracy | Δ acc | macro-F1 | AUC | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, names in entries:
        agg = aggregate(bench, names)
        if agg is None:
            lines.append(f"| {label} | 0 | not run | | | | |")
            continue
        delta = "" if baseline is None else f"{agg['accuracy'][0] - baseline:+.4f}"
        secs = "—" if agg["seconds"] is None else f"{agg['seconds']:.0f}" if agg["seconds"] >= 1 else "<1"
        lines.append(
            f"| {label} | {agg['n']} | {cell(agg['accuracy'])} | {delta} | {cell(agg['macro_f1'])} | "
            f"{cell(agg['auc'])} | {secs} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="run folders (default runs/techniques, or runs/techniques-quick)")
    parser.add_argument("--teacher", help="distillation teacher: a finished run of examples/sentiment.yaml")
    parser.add_argument("--quick", action="store_true", help="tiny splits and 2 seeds: check the script")
    parser.add_argument("--no-extras", action="store_true", help="skip 64-review, dropout and cosine rows")
    parser.add_argument("--no-full", action="store_true", help="skip the full-data runs of the two best")
    parser.add_argument(
        "--deadline", help="UTC HH:MM, the next one to come: start no run after it (finished ones are kept)"
    )
    args = parser.parse_args()

    global SEEDS
    common = QUICK if args.quick else LOW
    if args.quick:
        SEEDS = (1, 2)
    work = Path(args.work or ("runs/techniques-quick" if args.quick else "runs/techniques"))
    results = (work / "techniques.json") if args.quick else RESULTS / "techniques.json"
    deadline = next_time(args.deadline, time.time()) if args.deadline else None
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, results, common, deadline)
    record_machine(bench)
    # The command that makes these runs; --deadline only decides how many of them one sitting gets to.
    argv = " ".join(sys.argv[1:]).replace(f"--deadline {args.deadline}", "").split()
    bench.data["command"] = " ".join(["benchmarks/techniques.py", *argv])

    teacher = teacher_run(bench, args.teacher, args.quick)
    core, extras = rows(teacher)
    # The baseline's three seeds first (the noise level, and the ensemble's members), then every other row seed
    # by seed, so a benchmark cut short has each row at least once.
    for seed in SEEDS:
        seed_runs(bench, core[0], seed)
    for method in ("mean", "weighted"):
        members = [run_name(core[0], s) for s in SEEDS if run_name(core[0], s) in bench.data["runs"]]
        if len(members) >= 2:
            bench.ensemble(f"ensemble-{method}", members, method)
    few = [r for r in extras if r.name.endswith("64")]
    for group in (core[1:] + ([] if args.no_extras else few), [] if args.no_extras else extras[len(few) :]):
        for seed in SEEDS:
            for row in group:
                seed_runs(bench, row, seed)

    # Full data for the two best techniques at 256 (by mean test accuracy; the baseline's full run is the teacher).
    candidates = [r for r in core + extras if r.full and r.name != "baseline"]
    means = {r.name: aggregate(bench, [run_name(r, s) for s in SEEDS]) for r in candidates}
    best = sorted((m["accuracy"][0], name) for name, m in means.items() if m)[-2:][::-1]
    full_rows = []
    for _, name in best:
        row = next(r for r in candidates if r.name == name)
        overrides = [*row.overrides, "train.seed=1", "train.epochs=1", "train.eval_steps=300"]
        overrides.append("data.max_train_samples=64" if args.quick else "data.max_train_samples=null")
        full_rows.append((row, f"full-{name}"))
        if not args.no_full:
            bench.run(f"full-{name}", overrides)

    write_report(bench, core, extras, full_rows, args)


def record_machine(bench: Bench) -> None:
    """The machine and precision these runs compute on (harness.hardware_block), saved with the cached runs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import hardware_block, machine_name

    now, before = hardware_block(), bench.data.get("hardware")
    if before and bench.data["runs"] and machine_name(before) != machine_name(now):
        print(
            f"cached runs were measured on {machine_name(before)}; this sitting runs on {machine_name(now)}"
        )
        bench.data.setdefault("hardware_earlier", []).append(before)
    bench.data["hardware"] = now
    bench.data["precision"] = f"glmtune's auto: {now['precision_auto']['reason']}"
    bench.save()


def tfidf(bench: Bench) -> None:
    """The bar without a model (benchmarks/baseline_tfidf.py) on the same 256 reviews and test split."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from baseline_tfidf import run as tfidf_run

    result = tfidf_run(BASE, False, bench.common)
    bench.data["runs"]["tfidf"] = {
        "overrides": bench.common,
        "seconds": result["fit_seconds"],
        "train_examples": result["train_examples"],
        **{split: result[split] for split in ("validation", "test")},
    }
    bench.save()


def total_minutes(bench: Bench) -> float:
    return sum(r.get("seconds") or 0 for r in bench.data["runs"].values()) / 60


def write_report(bench: Bench, core: list[Row], extras: list[Row], full_rows, args) -> None:
    base = aggregate(bench, [run_name(core[0], s) for s in SEEDS])
    baseline = base["accuracy"][0] if base else None

    def entries(group: list[Row]) -> list[tuple[str, list[str]]]:
        return [(r.label, [run_name(r, s) for s in SEEDS] if r.seeded else [r.name]) for r in group]

    tfidf(bench)
    low = [("TF-IDF char 1–3-grams + logistic regression (no model)", ["tfidf"])] + entries(core)
    low += [
        ("ensemble of the baseline's seeds, mean probability", ["ensemble-mean"]),
        ("ensemble of the baseline's seeds, validation-weighted", ["ensemble-weighted"]),
    ]
    low += entries([r for r in extras if r.name in ("dropout", "cosine")])
    lines = [
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python {bench.data['command']}` (runs cached in",
        f"{bench.results_path.name} are not re-run; {total_minutes(bench):.0f} min of runs in all). Test split: 2,000",
        "reviews; mean ± sample std over the seeds run (train.seed 1, 2, 3); s / run: wall seconds per run.",
        "",
        "**256 training reviews** (the same 256 for every row and seed):",
        "",
        *table(bench, low, baseline),
        "",
        "**Prompt vs classification head** by training reviews:",
        "",
        *table(
            bench,
            [
                *entries([r for r in extras if r.name in ("head64", "prompt64")]),
                ("head, 256 reviews", [run_name(core[0], s) for s in SEEDS]),
                (
                    "prompt fine-tuned, 256 reviews",
                    [run_name(r, s) for r in core if r.name == "prompt" for s in SEEDS],
                ),
                ("head, all reviews (the teacher: demo recipe, 1 epoch)", ["teacher"]),
            ],
            None,
        ),
        "",
        "**All training reviews** (1 epoch, seed 1) for the two best techniques at 256:",
        "",
        *table(
            bench,
            [("baseline (the teacher run)", ["teacher"])] + [(r.label, [n]) for r, n in full_rows],
            None,
        ),
        "",
    ]
    text = "\n".join(lines)
    out = (bench.work / "techniques.md") if args.quick else RESULTS / "techniques.md"
    atomic_write_text(out, text)
    print(text)
    print(out)


if __name__ == "__main__":
    main()
