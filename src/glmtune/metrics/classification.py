"""Classification metrics: label ids and softmax probabilities in, plain JSON-ready numbers out.

``classification_metrics(y_true, probs, labels, loss=None)`` checks shapes (a mismatch is the caller's bug: a
ValueError), takes the argmax as the prediction and returns accuracy, macro/micro/weighted precision-recall-F1,
ROC-AUC (None where undefined), per-class scores and the confusion matrix — every number computed by
scikit-learn, never by hand, and every value a plain Python int/float/list/dict, so it goes straight into
metrics.json.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def _check_inputs(
    y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Shapes and ranges, checked once: a mismatch here is a bug in the caller, so it is a ValueError."""
    gold = np.asarray(y_true, dtype=np.int64).reshape(-1)  # [n]
    probs = np.asarray(probs, dtype=np.float64)  # [n, k]
    k = len(labels)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must have shape [n, {k}] (one column per label); got {list(probs.shape)}")
    if probs.shape[0] != gold.shape[0]:
        raise ValueError(f"{gold.shape[0]} gold labels but {probs.shape[0]} rows of probabilities")
    if gold.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    row_sums = probs.sum(axis=1)  # [n]; loose tolerance: half-precision softmax is off by ~1e-3
    if np.isfinite(row_sums).all() and not np.allclose(row_sums, 1.0, atol=1e-2):
        raise ValueError("probs rows must sum to 1 (softmax probabilities, not logits)")
    if gold.min() < 0 or gold.max() >= k:
        raise ValueError(f"gold label ids must be in [0, {k}); got {gold.min()}..{gold.max()}")
    return gold, probs


def _auc(gold: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC-AUC: binary → probability of class 1; multi-class → one-vs-rest macro average.

    None when it is undefined (a class absent from the gold labels, a single class, non-finite scores).
    """
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    if k < 2 or len(np.unique(gold)) < k or not np.isfinite(probs).all():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if k == 2:
            value = roc_auc_score(gold, probs[:, 1])
        else:
            # One-vs-rest macro, class by class: the same number as multi_class="ovr", but without its
            # rows-sum-to-1 check (1e-5), which bf16/fp16 softmax outputs fail. Renormalising instead would
            # break exact ties between rows and move the AUC.
            value = np.mean([roc_auc_score(gold == c, probs[:, c]) for c in range(k)])
    value = float(value)
    return value if math.isfinite(value) else None


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
    """Everything worth knowing about a classifier's predictions on one split, as plain JSON-ready values.

    ``y_true`` are label ids (indices into ``labels``), ``probs`` is ``[n, k]`` (one column per label);
    the prediction is the argmax. Classes absent from the split keep their row (``labels=range(k)``).
    Keys: accuracy, macro_/micro_ precision/recall/f1, weighted_f1, auc (None when undefined), n,
    per_class {label: {precision, recall, f1, support}}, labels, confusion_matrix (rows gold, columns
    predicted, both in ``labels`` order), and loss when given.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    gold, probs = _check_inputs(y_true, probs, labels)
    pred = probs.argmax(axis=1)  # [n]
    ids = list(range(len(labels)))

    def averaged(average: str) -> tuple[float, float, float]:
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=ids, average=average, zero_division=0)
        return float(p), float(r), float(f)

    macro_p, macro_r, macro_f = averaged("macro")
    micro_p, micro_r, micro_f = averaged("micro")
    _, _, weighted_f = averaged("weighted")
    per_p, per_r, per_f, per_support = precision_recall_fscore_support(
        gold, pred, labels=ids, average=None, zero_division=0
    )
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_precision": macro_p,
        "macro_recall": macro_r,
        "macro_f1": macro_f,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f,
        "weighted_f1": weighted_f,
        "auc": _auc(gold, probs),
        "n": int(gold.shape[0]),
    }
    if loss is not None:
        metrics["loss"] = float(loss)
    metrics["per_class"] = {
        name: {
            "precision": float(per_p[i]),
            "recall": float(per_r[i]),
            "f1": float(per_f[i]),
            "support": int(per_support[i]),
        }
        for i, name in enumerate(labels)
    }
    metrics["labels"] = list(labels)
    metrics["confusion_matrix"] = confusion_matrix(gold, pred, labels=ids).astype(int).tolist()
    return metrics
