"""Generation metrics: how close generated texts are to their references, each x 100, as plain floats.

``generation_metrics(predictions, references)`` returns exactly the keys of ``GENERATION_METRICS`` (config's
list, so configs can name them): BLEU-4 by sacrebleu and ROUGE-1/2/L by rouge-score (never by hand), plus exact
match. Chinese has no spaces, so ROUGE is given twice: over characters and over jieba words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glmtune.core.config import GENERATION_METRICS


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
