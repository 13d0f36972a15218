"""A learned-token mask made visible: ``glmtune data inspect``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glmtune.models.causal import IGNORE_INDEX

_LEARNED, _PROMPT, _RESET = "\x1b[1;32m", "\x1b[2m", "\x1b[0m"


def render_mask(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], color: bool = True) -> str:
    """The decoded example with learned tokens highlighted (bold green; prompt dim), for ``glmtune data inspect``.

    Without colour, learned spans are wrapped in « ». Special tokens are shown; runs of tokens are decoded
    together so multi-byte characters split over tokens stay readable.
    """
    if len(input_ids) != len(labels):
        raise ValueError(f"{len(input_ids)} ids but {len(labels)} labels")
    pieces, start = [], 0
    for end in range(1, len(input_ids) + 1):
        if end < len(input_ids) and (labels[end] != IGNORE_INDEX) == (labels[start] != IGNORE_INDEX):
            continue
        text = tokenizer.decode(list(input_ids[start:end]), skip_special_tokens=False)
        learned = labels[start] != IGNORE_INDEX
        if color:
            pieces.append(f"{_LEARNED if learned else _PROMPT}{text}{_RESET}")
        else:
            pieces.append(f"«{text}»" if learned else text)
        start = end
    return "".join(pieces)


__all__ = ["render_mask"]
