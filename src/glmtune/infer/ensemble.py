"""Ensembles of classification runs: majority vote, probability mean, or a weighted mean fit on validation.

``glmtune ensemble RUN_DIR... --method vote|mean|weighted --out DIR`` combines the class probabilities of
runs that were judged on the same validation and test splits, and evaluates the result like a run: the
output folder gets metrics.json (validation + test, the same metric names), predictions.jsonl,
validation_predictions.jsonl, confusion.png, and ensemble.json (members, weights, each member's own
metrics for comparison). A member's probabilities come from the prediction files its run folder already
holds; only where those are missing or stale (older runs, changed data) is its model loaded to predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glmtune.core import config as config_mod
from glmtune.core.config import Config
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir, atomic_dir, atomic_write_json, read_json

METHODS = ("vote", "mean", "weighted")
SPLITS = ("validation", "test")
# The data settings that decide the validation and test splits (data.classification): members must agree on
# all of them. Training-only settings (max_train_samples, augmentation, ...) may differ between members;
# data.labels may too, as long as labels.json (the label order the probabilities follow) is the same.
SPLIT_KEYS = (
    "dataset",
    "train_file",
    "validation_file",
    "test_file",
    "text_column",
    "label_column",
    "validation_size",
    "test_size",
    "max_eval_samples",
    "seed",
)
HEADLINE = ("accuracy", "macro_f1", "auc", "loss")  # member metrics kept in ensemble.json


@dataclass
class Member:
    """One run of the ensemble and its class probabilities per split (``[n, num_labels]``)."""

    run: RunDir
    cfg: Config
    labels: list[str]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "prediction files"  # or "model" when the run had to be loaded to predict


# --------------------------------------------------------------------------- members


def load_members(paths: list[str | Path]) -> list[Member]:
    """Check the runs can be combined: at least two distinct classification runs, same labels, same splits."""
    if len(paths) < 2:
        raise UserError(f"got {len(paths)} run folder(s)", field="RUN_DIR", expected="at least two runs")
    seen: dict[Path, str] = {}
    members = []
    for path in paths:
        run = RunDir(path)
        # Prediction files suffice (a zero-shot prompt run has no weights); load_run checks a run that must predict.
        info = run.check(need_weights=False)
        resolved = run.path.resolve()
        if resolved in seen:
            raise UserError(f"the same run as {seen[resolved]}", file=str(path), expected="distinct runs")
        seen[resolved] = str(path)
        if info.get("task", "classification") != "classification":
            raise UserError(
                f"a {info.get('task')} run",
                file=str(path),
                expected="classification runs (ensembles vote on labels)",
            )
        if not run.labels.is_file():
            raise UserError("no labels.json (did training finish?)", file=str(path))
        members.append(Member(run, config_mod.load(run.config), read_json(run.labels)))
    first = members[0]
    for member in members[1:]:
        if member.labels != first.labels:
            raise UserError(
                f"labels {member.labels} differ from {first.run.path}'s {first.labels}",
                file=str(member.run.path),
                expected="runs trained on the same label set",
            )
        for key in SPLIT_KEYS:
            mine, theirs = getattr(member.cfg.data, key), getattr(first.cfg.data, key)
            if mine != theirs:
                raise UserError(
                    f"data split differs from {first.run.path}'s: {mine!r} vs {theirs!r}",
                    file=str(member.run.config),
                    field=f"data.{key}",
                    expected="runs evaluated on the same validation and test splits",
                )
    return members


def _cached(path: Path, examples: list[Any], labels: list[str]) -> np.ndarray | None:
    """Probabilities ``[n, k]`` from a run's prediction file, if it holds exactly these examples; else None."""
    import json

    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != len(examples):
        return None
    for row, example in zip(rows, examples):
        stale = row.get("text") != example.text or row.get("gold") != labels[example.label]
        if stale or sorted(row.get("probs", {})) != sorted(labels):
            return None
    return np.array([[row["probs"][label] for label in labels] for row in rows], dtype=np.float64)


def fill_probs(members: list[Member], splits: dict[str, list[Any]]) -> None:
    """Each member's probabilities on each split: from its prediction files, else by loading it to predict."""
    from glmtune.infer import classifier

    for member in members:
        files = {"validation": member.run.validation_predictions, "test": member.run.predictions}
        for split, examples in splits.items():
            cached = _cached(files[split], examples, member.labels)
            if cached is not None:
                member.probs[split] = cached
        missing = [split for split in splits if split not in member.probs]
        if not missing:
            continue
        member.source = "model"
        loaded = classifier.load_run(member.run.path)
        for split in missing:
            probs = classifier.predict_texts(loaded, [e.text for e in splits[split]])  # [n, k]
            member.probs[split] = probs.double().numpy()
        del loaded


# --------------------------------------------------------------------------- combining


def vote(stack: np.ndarray) -> np.ndarray:
    """Majority vote of ``stack`` [members, n, k] as scores [n, k] whose argmax is the winning label.

    Scores are ``(votes + mean probability) / (members + 1)``: rows sum to 1, a label with more votes
    always scores higher (the mean probability adds less than one vote), and tied votes are broken by the
    mean probability.
    """
    members, _, k = stack.shape
    votes = np.eye(k)[stack.argmax(axis=2)].sum(axis=0)  # [n, k]: how many members chose each label
    return (votes + stack.mean(axis=0)) / (members + 1)  # [n, k]


def log_loss(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean negative log-likelihood of the gold labels (sklearn's log_loss)."""
    import warnings

    from sklearn.metrics import log_loss as sk_log_loss

    with warnings.catch_warnings():  # bf16 softmax rows sum to 1 ± 1e-3; evaluate checks them (1e-2)
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        return float(sk_log_loss(gold, probs, labels=list(range(probs.shape[1]))))


def fit_weights(stack: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Member weights on the simplex that minimise the log-loss of ``sum_m w_m p_m`` on ``gold``.

    ``stack`` is [members, n, k]. The objective is convex in ``w`` (minus the log of a linear function),
    so SLSQP from uniform weights finds the optimum; ties keep weights near uniform.
    """
    from scipy.optimize import minimize

    members = stack.shape[0]
    gold_probs = stack[:, np.arange(len(gold)), gold]  # [members, n]: each member's probability of gold
    eps = 1e-12

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        mix = np.clip(w @ gold_probs, eps, None)  # [n]
        return float(-np.log(mix).mean()), -(gold_probs / mix).mean(axis=1)  # value, gradient [members]

    result = minimize(
        objective,
        np.full(members, 1.0 / members),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
    )
    weights = np.where(result.x > 1e-9, result.x, 0.0)  # SLSQP leaves ±1e-17 where a member is unused
    weights = weights / weights.sum()
    fit = {
        "objective": "validation log-loss",
        "value": objective(weights)[0],
        "converged": bool(result.success),
    }
    return weights, fit


def combine(stack: np.ndarray, method: str, weights: np.ndarray) -> np.ndarray:
    """The ensemble's probabilities [n, k] from ``stack`` [members, n, k]."""
    if method == "vote":
        return vote(stack)
    return np.tensordot(weights, stack, axes=1)  # [n, k]; mean: uniform weights


# --------------------------------------------------------------------------- the command


def run(paths: list[str | Path], method: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Combine the runs ``paths`` by ``method`` and write the evaluated ensemble folder ``out``."""
    from glmtune import data as data_mod
    from glmtune import metrics as evaluation

    if method not in METHODS:
        raise UserError(f"got {method!r}", field="--method", expected="one of: " + ", ".join(METHODS))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError("output folder exists", file=str(out), expected="a new folder, or --overwrite")
    members = load_members(paths)
    labels = members[0].labels
    dataset = data_mod.load_classification(members[0].cfg.data)
    splits = {name: getattr(dataset, name) for name in SPLITS if getattr(dataset, name)}
    if method == "weighted" and "validation" not in splits:
        raise UserError(
            "no validation split to fit weights on",
            field="data.validation_size",
            expected="runs with a validation split, or --method mean/vote",
        )
    fill_probs(members, splits)

    stacks = {split: np.stack([m.probs[split] for m in members]) for split in splits}  # [members, n, k]
    golds = {split: np.array([e.label for e in examples]) for split, examples in splits.items()}
    weights, fit = np.full(len(members), 1.0 / len(members)), None
    if method == "weighted":
        weights, fit = fit_weights(stacks["validation"], golds["validation"])

    def metrics_of(probs: np.ndarray, split: str) -> dict[str, Any]:
        return evaluation.classification_metrics(
            golds[split], probs, labels, loss=log_loss(probs, golds[split])
        )

    results, probs = {}, {}
    for split in splits:
        probs[split] = combine(stacks[split], method, weights)
        results[split] = metrics_of(probs[split], split)
    scores = [{split: metrics_of(m.probs[split], split) for split in splits} for m in members]
    member_rows = [
        {
            "run": str(member.run.path),
            "weight": float(weight) if method != "vote" else None,
            "probabilities_from": member.source,
            **{split: {k: score[split].get(k) for k in HEADLINE} for split in splits},
        }
        for member, weight, score in zip(members, weights, scores)
    ]
    summary = {
        "method": method,
        "labels": labels,
        "members": member_rows,
        "weights_fit": fit,
        "data": {key: getattr(members[0].cfg.data, key) for key in SPLIT_KEYS},
    }

    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "metrics.json", results)
        atomic_write_json(tmp / "ensemble.json", summary)
        for split, name in (("validation", "validation_predictions.jsonl"), ("test", "predictions.jsonl")):
            if split in splits:
                texts = [e.text for e in splits[split]]
                rows = evaluation.prediction_rows(texts, golds[split].tolist(), probs[split], labels)
                evaluation.write_predictions(tmp / name, rows)
        if "test" in results:
            evaluation.plot_confusion(results["test"]["confusion_matrix"], labels, tmp / "confusion.png")

    split = "test" if "test" in splits else "validation"
    names = [m.run.path.name for m in members]
    if len(set(names)) < len(names):  # e.g. trial-000 of two tunes: the full paths tell them apart
        names = [str(m.run.path) for m in members]
    table = {name: score[split] for name, score in zip(names, scores)}
    table[f"ensemble ({method})"] = results[split]
    print(f"{split} split:")
    print(evaluation.format_metrics_table(table))
    return out


__all__ = ["run", "vote", "fit_weights", "combine", "load_members", "METHODS", "SPLIT_KEYS"]
