"""``glmtune data redact CONFIG --preview N``: what ``data.redact`` would replace, before and after, no model needed.

The config's splits are loaded as training loads them but unredacted, then redacted with the same functions the
loaders use (``data.redact``), so a person sees the originals beside the placeholders; nothing is written. Shown:
the first N examples in which something is replaced (train, then validation, then test; only the changed texts or
messages), then the replacements per type and split over every example.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from glmtune.core.config.model_data import REDACT_TYPES
from glmtune.data.messages import Message
from glmtune.data.redact import Redactor, redact_splits
from glmtune.data.summary import new_counts, redacted_lines


def _splits(cfg: Any) -> tuple[dict[str, list[Any]], Any]:
    """The config's splits read with redaction off, and the ``Redactor`` method for one of their items."""
    data = dataclasses.replace(cfg.data, redact=[])
    if cfg.task == "sft":
        from glmtune.data.sft import load_sft

        loaded: Any = load_sft(data)
        redact: Any = Redactor.conversation
    elif cfg.task == "preference":
        from glmtune.data.preference_load import load_preference

        loaded, redact = load_preference(data), Redactor.preference
    else:
        from glmtune.data.classification import load_classification

        loaded, redact = load_classification(data), Redactor.texted
    return {name: list(getattr(loaded, name)) for name in ("train", "validation", "test")}, redact


def _message(message: Message) -> str:
    calls = f" {json.dumps(message.tool_calls, ensure_ascii=False)}" if message.tool_calls else ""
    return f"{message.role}: {message.content}{calls}"


def _texts(item: Any) -> list[str]:
    """What a person reads of an item: its text, or one line per message (preference: the prompt, then each
    response)."""
    if hasattr(item, "messages"):
        return [_message(m) for m in item.messages]
    if hasattr(item, "chosen"):
        responses = [("chosen", item.chosen), ("rejected", item.rejected)]
        return [_message(m) for m in item.prompt] + [
            f"{k} {_message(m)}" for k, m in responses if m is not None
        ]
    return [item.text]


def preview(cfg: Any, n: int) -> list[str]:
    """The lines of the preview (see the module docstring); ``data.redact`` empty: every type is previewed."""
    kinds = list(cfg.data.redact) or list(REDACT_TYPES)
    lines = [] if cfg.data.redact else [f"data.redact is empty: previewing every type ({', '.join(kinds)})"]
    splits, redact = _splits(cfg)
    counts = new_counts({})
    redacted = redact_splits(splits, kinds, redact, counts)
    shown = 0
    for (name, originals), changed in zip(splits.items(), redacted):
        for before, after in zip(originals, changed):
            pairs = [(b, a) for b, a in zip(_texts(before), _texts(after)) if b != a]
            if not pairs or shown >= n:
                continue
            shown += 1
            where = f"{before.source}:{before.line}" if before.line is not None else before.source
            lines.append(f"--- {shown}: {name} · {where}")
            for b, a in pairs:
                lines += [f"  before  {b}", f"  after   {a}"]
    total = sum(len(items) for items in splits.values())
    return lines + redacted_lines(counts) + [f"(over all {total} examples of train, validation and test)"]


__all__ = ["preview"]
