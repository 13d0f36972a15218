"""How many examples each split read, kept, cut and used: one ``SplitCounts`` per split, one table for people.

The same numbers go everywhere a person looks: the console table (``counts_table``), ``data_summary.json``
(``SplitCounts.to_json`` under each split's ``counts``) and the metrics table's ``n`` (the ``used`` examples of
validation and test). Per split:

* ``read``: what the split got from its file or from the carve of the training data;
* ``kept``: ``read`` less what cleaning removed (``removed``, by reason: examples also in another split under
  ``data.dedup_across_splits``, the ``data.max_*_samples`` caps, mixing weights below 1);
* ``truncated``: kept examples cut to fit ``train.max_seq_len`` (still used);
* ``dropped``: kept examples left out at encoding, by reason (a conversation whose last round alone does not fit);
* ``used``: what the model trains or is evaluated on: ``kept`` + ``added`` (augmented copies, mixing weights
  above 1) - ``dropped``;
* ``redacted`` (only under ``data.redact``): personal data replaced by placeholders, per type, in the examples
  the split kept (a repeated example counts each time; augmented copies are made from redacted texts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "validation", "test")
COLUMNS = ("read", "kept", "truncated", "dropped", "used")


@dataclass
class SplitCounts:
    """The counts of one split (see the module docstring); reasons are short phrases a person can act on."""

    read: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # reason → examples cleaning removed
    added: dict[str, int] = field(default_factory=dict)  # reason → examples added (augmentation, weights)
    truncated: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)  # reason → examples left out at encoding
    redacted: dict[str, int] | None = None  # data.redact type → replacements; None: redaction off

    def remove(self, reason: str, count: int) -> None:
        if count > 0:
            self.removed[reason] = self.removed.get(reason, 0) + count

    def add(self, reason: str, count: int) -> None:
        if count > 0:
            self.added[reason] = self.added.get(reason, 0) + count

    def drop(self, reason: str, count: int) -> None:
        if count > 0:
            self.dropped_by[reason] = self.dropped_by.get(reason, 0) + count

    def encoded(self, num_truncated: int, num_dropped: int, max_seq_len: int) -> None:
        """Record what encoding to ``max_seq_len`` tokens truncated and dropped (``EncodedConversations``)."""
        self.truncated = num_truncated
        self.drop(f"longer than train.max_seq_len={max_seq_len} even without earlier rounds", num_dropped)

    def resize(self, reason: str, before: int, after: int) -> None:
        """Record a step that changed the split's size from ``before`` to ``after`` (removed or added)."""
        self.remove(reason, before - after)
        self.add(reason, after - before)

    @property
    def kept(self) -> int:
        return self.read - sum(self.removed.values())

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by.values())

    @property
    def used(self) -> int:
        return self.kept + sum(self.added.values()) - self.dropped

    def to_json(self) -> dict[str, Any]:
        """``data_summary.json``'s ``counts`` of the split: the five numbers and every reason behind them."""
        numbers: dict[str, Any] = {name: getattr(self, name) for name in COLUMNS}
        redacted = {} if self.redacted is None else {"redacted": dict(self.redacted)}
        return {
            **numbers,
            "removed": dict(self.removed),
            "added": dict(self.added),
            "dropped_by": dict(self.dropped_by),
            **redacted,
        }


def new_counts(
    reads: Mapping[str, int], redacted: Mapping[str, dict[str, int] | None] | None = None
) -> dict[str, SplitCounts]:
    """Fresh counts for the splits, each with what it read (and what ``data.redact`` replaced in it)."""
    return {
        name: SplitCounts(read=reads.get(name, 0), redacted=(redacted or {}).get(name)) for name in SPLITS
    }


def counts_table(counts: Mapping[str, SplitCounts]) -> str:
    """An aligned table (one row per split, the columns of ``COLUMNS``), then one line per reason for what was
    removed, added or dropped, naming the splits it touched: what the console prints at the start of a run."""
    header = ["split", *COLUMNS]
    body = [[name, *(str(getattr(c, column)) for column in COLUMNS)] for name, c in counts.items()]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(row[1:], widths[1:]))])
        for row in [header, *body]
    ]
    for label, attribute in (("not kept", "removed"), ("added", "added"), ("dropped", "dropped_by")):
        reasons: dict[str, list[str]] = {}
        for name, c in counts.items():
            for reason, count in getattr(c, attribute).items():
                reasons.setdefault(reason, []).append(f"{name} {count}")
        lines += [f"{label}: {reason} ({', '.join(where)})" for reason, where in reasons.items()]
    return "\n".join(lines + redacted_lines(counts))


def redacted_lines(counts: Mapping[str, SplitCounts]) -> list[str]:
    """``redacted: phone (train 12, test 2)`` per type found; ``redacted: nothing found`` when on but idle."""
    found: dict[str, list[str]] = {}
    for name, c in counts.items():
        for kind, count in (c.redacted or {}).items():
            found.setdefault(kind, [])
            if count:
                found[kind].append(f"{name} {count}")
    if not found:
        return []  # data.redact is off
    lines = [f"redacted: {kind} ({', '.join(where)})" for kind, where in found.items() if where]
    return lines or [f"redacted: nothing found ({', '.join(found)})"]


__all__ = ["COLUMNS", "SPLITS", "SplitCounts", "counts_table", "new_counts", "redacted_lines"]
