"""What a judged model leaves behind: prediction rows and files, the printed metrics table, the confusion plot.

``prediction_rows`` + ``write_predictions`` make predictions.jsonl (written atomically, Chinese kept readable);
``format_metrics_table`` prints metrics dicts side by side, one column per split; ``plot_confusion`` draws a
confusion matrix as a PNG with matplotlib's Agg canvas (no display needed, CJK label names readable:
``fonts``), written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glmtune.core.runs import atomic_path, atomic_write_jsonl
from glmtune.metrics.fonts import with_plot_fonts

# Rows of the text table, in reading order: (key in the metrics dict, what the row is called). These are
# classification's headline metrics, the default; SFT passes its own rows.
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


@with_plot_fonts
def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> None:
    """Confusion heat map (rows gold, columns predicted) with counts in the cells, written atomically as PNG.

    Colour is each gold row normalised (recall per cell), so small classes stay readable. Label names in
    Chinese draw in the CJK font ``fonts.plot_fonts`` chooses.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64).reshape(len(labels), len(labels))  # [gold, predicted]
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(totals, 1)  # row-normalised colour, 0..1
    k = len(labels)
    side = min(3.0 + 0.6 * k, 24.0)
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
