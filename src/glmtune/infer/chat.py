"""``glmtune chat RUN_DIR|MODEL``: a multi-turn terminal conversation over ``generate.stream``.

Replies stream as they are generated. Commands: ``/clear`` forgets the conversation, ``/exit`` (or end of
input) leaves. The history is kept within the context window: whole oldest rounds (a user turn and its reply)
are dropped until the prompt plus ``max_new_tokens`` fits. Plain stdin/stdout: with input piped in, the output
is just the replies, one per line (no prompts, no colours), so it can be scripted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from glmtune.data.conversation import Message
from glmtune.infer.lm import LoadedLM, generation_config, prompt_ids

COMMANDS = {"/clear": "forget the conversation", "/exit": "leave"}


def context_window(loaded: LoadedLM, requested: int | None = None) -> int:
    """Tokens a prompt plus its reply may take: ``requested``, else the model's positions (or 4096)."""
    if requested:
        return requested
    config = loaded.model.config
    for name in ("max_position_embeddings", "seq_length", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


def fit_history(
    loaded: LoadedLM, system: list[Message], history: list[Message], window: int, max_new_tokens: int
) -> tuple[list[Message], list[int]]:
    """The history with its oldest rounds dropped until prompt + reply fit ``window``; and the prompt ids.
    The last user turn is always kept (cut from the left if it alone is too long)."""
    cfg = loaded.cfg
    budget = max(1, window - max_new_tokens)
    while True:
        messages = loaded.with_knowledge(system + history)  # knowledge.kb: passages for the last user turn
        ids = prompt_ids(loaded.tokenizer, messages, None, cfg.data.template, 10**9)
        starts = [i for i, m in enumerate(history) if m.role == "user"]
        if len(ids) <= budget or len(starts) <= 1:
            return history, ids[-budget:]
        history = history[starts[1] :]


def run_chat(
    loaded: LoadedLM,
    *,
    system: str | None = None,
    max_context: int | None = None,
    lines: Iterable[str] | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
) -> None:
    """The REPL. ``lines`` defaults to stdin and ``out`` to stdout; ``interactive`` (prompts shown) defaults to
    whether stdin is a terminal."""
    from glmtune.infer.generate import stream

    out = out or sys.stdout
    interactive = sys.stdin.isatty() if interactive is None else interactive
    lines = iter(lines) if lines is not None else None
    gen_cfg = generation_config(loaded.cfg, loaded.format.stop_ids())
    window = context_window(loaded, max_context)
    system_turn = [Message("system", system)] if system else []
    history: list[Message] = []
    if interactive:
        print("glmtune chat · " + " · ".join(f"{c} {what}" for c, what in COMMANDS.items()), file=out)
    while True:
        if interactive:
            out.write("\n> ")
            out.flush()
        line = _read_line(lines)
        if line is None or line.strip() == "/exit":
            break
        text = line.rstrip("\n")
        if text.strip() == "/clear":
            history = []
            if interactive:
                print("(conversation cleared)", file=out)
            continue
        if not text.strip():
            continue
        history.append(Message("user", text))
        history, ids = fit_history(loaded, system_turn, history, window, gen_cfg.max_new_tokens)
        reply = stream(loaded.model, loaded.tokenizer, ids, gen_cfg)
        for piece in reply:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        history.append(Message("assistant", reply.text or ""))


def _read_line(lines: Any) -> str | None:
    if lines is not None:
        return next(lines, None)
    line = sys.stdin.readline()
    return line if line else None


__all__ = ["context_window", "fit_history", "run_chat"]
