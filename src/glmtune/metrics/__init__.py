"""Judging a model: classification metrics, metric tables, confusion plots and prediction rows.

Metrics are computed by scikit-learn (never by hand) and returned as plain, JSON-serialisable Python values,
so they can go straight into metrics.json. Plots are drawn with matplotlib's Agg canvas and written
atomically. Generation metrics (BLEU by sacrebleu, ROUGE by rouge-score) live in their own section below.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glmtune.core.config import GENERATION_METRICS
from glmtune.core.runs import atomic_path, atomic_write_jsonl

# =========================================================================== classification metrics

# Rows of the text table, in reading order: (key in the metrics dict, what the row is called).
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro_f1"),
    ("micro_f1", "micro_f1"),
    ("macro_precision", "macro_precision"),
    ("macro_recall", "macro_recall"),
    ("auc", "auc"),
    ("loss", "loss"),
    ("n", "n"),
)


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


def format_metrics_table(
    metrics_by_split: dict[str, dict[str, Any]], rows: Sequence[tuple[str, str]] = TABLE_ROWS
) -> str:
    """An aligned text table: one row per headline metric (``rows``: classification's by default), one column
    per split; ``-`` where missing."""
    splits = list(metrics_by_split)

    def cell(value: Any, key: str) -> str:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            return "-"
        if key == "n":
            return str(int(value))
        return f"{float(value):.4f}"

    header = ["metric", *splits]
    body = [[name, *(cell(metrics_by_split[s].get(key), key) for s in splits)] for key, name in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first, *rest = row
        return "  ".join(
            [first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def _cjk_fonts() -> list[str]:
    """Installed font families that can draw Chinese label names (tried after DejaVu Sans, in order)."""
    from matplotlib import font_manager

    wanted = (
        "Noto Sans CJK SC",
        "Noto Sans SC",
        "Source Han Sans SC",
        "WenQuanYi Zen Hei",
        "WenQuanYi Micro Hei",
        "SimHei",
        "Microsoft YaHei",
        "PingFang SC",
        "Heiti SC",
        "AR PL UMing CN",
    )
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return [name for name in wanted if name in installed]


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> None:
    """Confusion heat map (rows gold, columns predicted) with counts in the cells, written atomically as PNG.

    Colour is each gold row normalised (recall per cell), so small classes stay readable. Label names a
    font cannot draw (e.g. Chinese without a CJK font) render as boxes instead of failing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64).reshape(len(labels), len(labels))  # [gold, predicted]
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(totals, 1)  # row-normalised colour, 0..1
    k = len(labels)
    side = min(3.0 + 0.6 * k, 24.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph.*missing.*")
        warnings.filterwarnings("ignore", message=r".*missing from font.*")
        import matplotlib

        with matplotlib.rc_context({"font.family": ["DejaVu Sans", *_cjk_fonts()]}):
            fig = Figure(figsize=(side + 1.2, side), dpi=100)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of gold row")
            ax.set_xticks(
                range(k), labels=list(labels), rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center"
            )
            ax.set_yticks(range(k), labels=list(labels))
            ax.set_xlabel("predicted")
            ax.set_ylabel("gold")
            ax.set_title("confusion matrix")
            if k <= 30:  # beyond that the numbers are unreadable anyway
                for i in range(k):
                    for j in range(k):
                        colour = "white" if shares[i, j] > 0.5 else "black"
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=9)
            fig.tight_layout()
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")


def prediction_rows(
    texts: Sequence[str], y_true: Sequence[int] | None, probs: np.ndarray, labels: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per example for predictions.jsonl: ``{"text", "gold", "pred", "probs": {label: p}}``.

    ``gold`` is left out when there are no gold labels (predicting on unlabelled text).
    """
    probs = np.asarray(probs, dtype=np.float64)  # [n, k]
    if probs.ndim != 2 or probs.shape != (len(texts), len(labels)):
        raise ValueError(f"probs must have shape [{len(texts)}, {len(labels)}]; got {list(probs.shape)}")
    if y_true is not None and len(y_true) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(y_true)} gold labels")
    rows = []
    for i, text in enumerate(texts):
        row: dict[str, Any] = {"text": text}
        if y_true is not None:
            row["gold"] = labels[int(y_true[i])]
        row["pred"] = labels[int(probs[i].argmax())]
        row["probs"] = {name: float(p) for name, p in zip(labels, probs[i], strict=True)}
        rows.append(row)
    return rows


def write_predictions(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write prediction rows as JSON lines (predictions.jsonl), atomically; Chinese text stays readable."""
    atomic_write_jsonl(path, rows)


# =========================================================================== generation metrics
# BLEU and ROUGE over generated text, computed by sacrebleu and rouge-score (never by hand). Chinese has no
# spaces, so ROUGE is given twice: over characters, and over jieba words.


class _CharTokens:
    """rouge-score tokenizer: every non-space character is a token (text kept as is, no lowercasing)."""

    def tokenize(self, text: str) -> list[str]:
        return [char for char in text if not char.isspace()]


class _JiebaTokens:
    """rouge-score tokenizer: jieba words (its default dictionary, accurate mode), spaces dropped."""

    def __init__(self) -> None:
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)  # not "Building prefix dict..." on every first use
        self._jieba = jieba.Tokenizer()  # a private instance: nobody's user dictionary changes our words

    def tokenize(self, text: str) -> list[str]:
        return [word for word in self._jieba.lcut(text) if word.strip()]


_ROUGE_TOKENIZERS: dict[str, Any] = {}


def _rouge_f1(kind: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x 100 with ``kind`` tokens ("char" or "word"). A pair where both texts have no
    tokens counts as a perfect match (rouge-score itself would give 0); one empty side scores 0."""
    from rouge_score.rouge_scorer import RougeScorer

    if kind not in _ROUGE_TOKENIZERS:
        _ROUGE_TOKENIZERS[kind] = _CharTokens() if kind == "char" else _JiebaTokens()
    tokenizer = _ROUGE_TOKENIZERS[kind]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        if not tokenizer.tokenize(prediction) and not tokenizer.tokenize(reference):
            for name in totals:
                totals[name] += 1.0
            continue
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for name in totals:
            totals[name] += scores[name].fmeasure
    return {f"{name}_{kind}": 100 * total / len(predictions) for name, total in totals.items()}


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """How close generated texts are to their references, each x 100 (0-100), as plain floats:

    * ``bleu4``: corpus BLEU-4 by sacrebleu with its Chinese tokenizer (``tokenize="zh"``: every CJK character
      is a token, other text split like 13a), default exponential smoothing;
    * ``rouge{1,2,L}_char`` / ``rouge{1,2,L}_word``: mean per-example ROUGE F1 by rouge-score over characters
      / over jieba words (see ``_rouge_f1`` for empty texts);
    * ``exact_match``: the share of predictions equal to their reference after stripping surrounding space.
    """
    import sacrebleu

    predictions, references = [str(p) for p in predictions], [str(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no examples to evaluate")
    metrics = {"bleu4": float(sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score)}
    metrics.update(_rouge_f1("char", predictions, references))
    metrics.update(_rouge_f1("word", predictions, references))
    matches = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    metrics["exact_match"] = 100 * matches / len(predictions)
    return {name: float(metrics[name]) for name in GENERATION_METRICS}
