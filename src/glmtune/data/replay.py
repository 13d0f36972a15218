"""Replay against forgetting (``data.replay``): a seeded sample of an earlier run's training split mixed into a
continued run's training split.

The earlier run's training split is read back exactly as that run read it: its ``data`` section from its
config.yaml (every data path absolute there, ``data.run_config``), through the same loader, so the split seed and
caps give the same examples it trained on (not its own augmented copies, nor what it replayed itself). Of those,
``round(fraction × new_size)`` are drawn without replacement (at most all of them) with ``random.Random(seed)``
and appended after the new examples; the counts table lists them as added. Classification examples are re-indexed
by label name, so an earlier split's labels must all be in the continued run's (they are: it keeps them).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.classification import Example, load_classification
from glmtune.data.conversation import Conversation
from glmtune.data.summary import SplitCounts

T = TypeVar("T")

REASON = "replayed from the earlier run (data.replay)"


def replay_count(fraction: float, new_size: int, available: int) -> int:
    """How many earlier examples to add: ``round(fraction × new_size)``, at most ``available``."""
    return min(round(fraction * new_size), available)


def sample(items: Sequence[T], count: int, seed: int) -> list[T]:
    """``count`` of ``items`` drawn without replacement, seeded; in the drawn order."""
    return random.Random(seed).sample(list(items), count)


def earlier_examples(earlier: DataConfig, labels: list[str]) -> list[Example]:
    """The earlier classification run's training split, its label ids those of ``labels`` (the same names)."""
    data = load_classification(earlier)
    missing = sorted(set(data.labels) - set(labels))
    if missing:  # a continued run keeps the earlier labels, so only a hand-edited config.yaml gets here
        raise UserError(
            f"the earlier run's training data has labels {', '.join(missing)} this run does not",
            field="data.labels",
            expected="every label of the earlier run, in its order",
        )
    ids = {name: index for index, name in enumerate(labels)}
    return [
        Example(e.text, ids[data.labels[e.label]], e.line, e.source) for e in data.train
    ]  # re-indexed by name


def earlier_conversations(earlier: DataConfig) -> list[Conversation]:
    """The earlier SFT run's training split (its files or built-in datasets, weights and split seed)."""
    from glmtune.data.sft import load_sft

    return load_sft(earlier).train


def mix(
    train: list[T], earlier: Sequence[T], fraction: float, new_size: int, seed: int, counts: SplitCounts
) -> list[T]:
    """``train`` with ``replay_count(fraction, new_size, len(earlier))`` seeded earlier examples appended; the
    counts record them as added."""
    count = replay_count(fraction, new_size, len(earlier))
    counts.add(REASON, count)
    return train + sample(earlier, count, seed)


__all__ = ["REASON", "earlier_conversations", "earlier_examples", "mix", "replay_count", "sample"]
