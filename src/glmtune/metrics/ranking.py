"""Regression and per-group ranking metrics: scores and targets in, plain JSON-ready numbers out.

``regression_metrics(y_true, y_pred)`` returns mse, mae, rmse, r2 (scikit-learn) and pearson, spearman (scipy).
``ranking_metrics(groups, scores, gains, relevant, ks)`` ranks each group's items by score (a user's candidate
items, a query's documents) and averages over groups: ``ndcg@k`` (graded gains, scikit-learn's ``ndcg_score``,
ties averaged), ``map`` (scikit-learn's average precision), ``mrr`` and ``hit@k`` (the first relevant item's
rank; ties broken by input order), and ``group_auc`` (per-group ROC-AUC, an unweighted mean over groups).
A group with one item is skipped by every ranking metric; a group whose items are all relevant or all not is
skipped by the binary ones (map, mrr, hit@k, group_auc); both counts are reported, never hidden.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, Any]:
    """Errors and correlations of predicted against gold scores; a correlation is None where undefined
    (fewer than two items, or a constant side)."""
    from scipy import stats
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    gold = np.asarray(y_true, dtype=np.float64).reshape(-1)  # [n]
    pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)  # [n]
    if gold.shape != pred.shape:
        raise ValueError(f"{gold.shape[0]} gold scores but {pred.shape[0]} predictions")
    if gold.size == 0:
        raise ValueError("no examples to evaluate")
    mse = mean_squared_error(gold, pred)
    out: dict[str, Any] = {
        "n": int(gold.size),
        "mse": float(mse),
        "rmse": math.sqrt(mse),
        "mae": float(mean_absolute_error(gold, pred)),
        "r2": _finite(r2_score(gold, pred)) if gold.size > 1 else None,
    }
    constant = gold.size < 2 or np.ptp(gold) == 0 or np.ptp(pred) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["pearson"] = None if constant else _finite(stats.pearsonr(gold, pred).statistic)
        out["spearman"] = None if constant else _finite(stats.spearmanr(gold, pred).statistic)
    return out


def _first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> int:
    """1-based rank of the best-scored relevant item; a stable sort, so equal scores keep input order."""
    order = np.argsort(-scores, kind="stable")  # [m]
    return int(np.flatnonzero(relevant[order])[0]) + 1


def _group_scores(
    scores: np.ndarray, gains: np.ndarray, relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, float] | None:
    """One group's metrics; None for the binary ones when every item is relevant or none is."""
    from sklearn.metrics import average_precision_score, ndcg_score, roc_auc_score

    out = {f"ndcg@{k}": float(ndcg_score(gains[None, :], scores[None, :], k=k)) for k in ks}
    if relevant.all() or not relevant.any():
        return out
    rank = _first_relevant_rank(scores, relevant)
    out["map"] = float(average_precision_score(relevant, scores))
    out["mrr"] = 1.0 / rank
    out.update({f"hit@{k}": float(rank <= k) for k in ks})
    out["group_auc"] = float(roc_auc_score(relevant, scores))
    return out


def ranking_metrics(
    groups: Sequence[Any],
    scores: Sequence[float],
    gains: Sequence[float],
    relevant: Sequence[bool],
    ks: Sequence[int] = (5, 10),
) -> dict[str, Any]:
    """Per-group ranking metrics averaged over the groups where each is defined.

    ``gains`` grade each item for nDCG (a rating, or 1/0); ``relevant`` marks the items that count as hits for
    the binary metrics. Returns each metric (None where no group qualifies), ``groups`` (how many groups),
    ``groups_skipped_single`` (one item) and ``groups_skipped_one_label`` (all relevant or none).
    """
    keys = np.asarray([str(g) for g in groups])  # [n]
    score = np.asarray(scores, dtype=np.float64)  # [n]
    gain = np.asarray(gains, dtype=np.float64)  # [n]
    rel = np.asarray(relevant, dtype=bool)  # [n]
    if not (keys.shape == score.shape == gain.shape == rel.shape):
        raise ValueError("groups, scores, gains and relevant must have one value per item")
    names = [f"ndcg@{k}" for k in ks] + ["map", "mrr"] + [f"hit@{k}" for k in ks] + ["group_auc"]
    per_metric: dict[str, list[float]] = {name: [] for name in names}
    single = one_label = 0
    unique = list(dict.fromkeys(keys.tolist()))
    for key in unique:
        idx = np.flatnonzero(keys == key)  # [m]
        if idx.size < 2:
            single += 1
            continue
        found = _group_scores(score[idx], gain[idx], rel[idx], ks)
        if "map" not in found:
            one_label += 1
        for name, value in found.items():
            per_metric[name].append(value)
    out: dict[str, Any] = {n: (float(np.mean(v)) if v else None) for n, v in per_metric.items()}
    out.update(groups=len(unique), groups_skipped_single=single, groups_skipped_one_label=one_label)
    return out
