"""Judging a model: classification and generation metrics, prediction files, metric tables, confusion plots.

classification.py (scikit-learn metrics from label ids and probabilities) · generation.py (BLEU, ROUGE and exact
match of generated text) · report.py (predictions.jsonl rows, the printed table, the confusion PNG). Every
metric is computed by a library, never by hand, and returned as plain JSON-ready values. Import from here:
``from glmtune import metrics; metrics.classification_metrics(...)``.
"""

from __future__ import annotations

from glmtune.core.config import GENERATION_METRICS
from glmtune.metrics.classification import classification_metrics
from glmtune.metrics.generation import generation_metrics
from glmtune.metrics.report import (
    TABLE_ROWS,
    format_metrics_table,
    plot_confusion,
    prediction_rows,
    write_predictions,
)

__all__ = [
    "GENERATION_METRICS",
    "TABLE_ROWS",
    "classification_metrics",
    "format_metrics_table",
    "generation_metrics",
    "plot_confusion",
    "prediction_rows",
    "write_predictions",
]
