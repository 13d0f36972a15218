"""Leakage between splits: the same example in training and in validation or test inflates every score.

Examples are compared by a normalised text (Unicode NFKC, case folded, whitespace, punctuation and symbols
removed), so "你好，世界!" and "你好 世界" are one example. ``find_leakage`` counts, for each pair of splits, the
examples of the later split that the earlier one already has, with a few of them to show; the loaders put that
in their summary and warn (always). ``drop_leaked`` removes them from training (``data.dedup_across_splits``).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
_EXAMPLES = 3  # shown per pair
# Why training lost examples under data.dedup_across_splits (the data summary's reason).
DEDUP_REASON = "also in validation or test (data.dedup_across_splits)"
_KEPT = {"L", "N", "M"}  # letters, numbers, marks; everything else (spaces, punctuation, symbols) is dropped


def normalise(text: str) -> str:
    """``text`` as compared: NFKC, case folded, only letters, numbers and marks."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if unicodedata.category(c)[0] in _KEPT)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def find_leakage(
    splits: dict[str, Sequence[T]],
    text: Callable[[T], str],
    origin: Callable[[T], str],
) -> dict[str, Any]:
    """``{"train/test": {"count", "of", "examples": ["'text' (test.jsonl:3; also train.jsonl:12)"]}, ...}`` for
    every pair of splits that share examples (nothing: ``{}``); ``text`` gives an example's text to compare,
    ``origin`` where it came from. Each pair of splits that shares examples is logged as a warning."""
    keyed = {
        name: [(normalise(text(item)), item) for item in items] for name, items in splits.items()
    }  # [(key, item)]
    report: dict[str, Any] = {}
    for first, second in PAIRS:
        seen: dict[str, T] = {}
        for key, item in keyed.get(first, []):
            if key:
                seen.setdefault(key, item)
        shared = [(item, seen[key]) for key, item in keyed.get(second, []) if key and key in seen]
        if not shared:
            continue
        examples = [
            f"'{_short(text(item))}' ({origin(item)}; also {origin(other)})"
            for item, other in shared[:_EXAMPLES]
        ]
        report[f"{first}/{second}"] = {"count": len(shared), "of": len(splits[second]), "examples": examples}
        fix = " (data.dedup_across_splits: true removes them from training)" if first == "train" else ""
        logger.warning(
            "leakage: %d of %d %s examples are also in %s%s, e.g. %s",
            len(shared),
            len(splits[second]),
            second,
            first,
            fix,
            examples[0],
        )
    return report


def drop_leaked(train: Sequence[T], held_out: Sequence[Sequence[T]], text: Callable[[T], str]) -> list[T]:
    """The training examples whose normalised text is in none of the ``held_out`` splits, in order."""
    held = {normalise(text(item)) for split in held_out for item in split} - {""}
    return [item for item in train if normalise(text(item)) not in held]


__all__ = ["DEDUP_REASON", "PAIRS", "drop_leaked", "find_leakage", "normalise"]
