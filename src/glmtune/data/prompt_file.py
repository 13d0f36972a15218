"""Prompts to reply to, read from a user's file (``glmtune predict --input``, ``glmtune explain --input``).

``read_prompts(path, data)`` accepts conversations ending with the user's turn (``messages``, sharegpt
``conversations``) or one prompt per record (``prompt``, ``text``, or alpaca ``instruction`` + ``input``), with an
optional ``system``; read with the run's column names, encoding and sheet. A mistake is one line naming the file,
the record and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.messages import Conversation, Message


def read_prompts(path: str | Path, data: Any = None) -> list[Conversation]:
    """Prompts to reply to, from a JSONL/JSON/CSV/... file: ``messages`` (or sharegpt ``conversations``) ending
    with the user's turn, else a ``prompt``, ``text`` or alpaca ``instruction`` (+ ``input``) column, with an
    optional ``system``. ``data``: the run's ``DataConfig``, to read the file as training read its files (its
    ``columns`` names, ``encoding``, ``sheet``)."""
    from glmtune.core.config import DataConfig
    from glmtune.data.read import columns_of, read_records, where
    from glmtune.data.sft import read_file

    data = data if data is not None else DataConfig(train_file=str(path))
    names = data.columns or {}
    records = read_records(path, encoding=data.encoding, sheet=data.sheet)
    if not records:
        raise UserError("no prompts in the file", file=str(path), expected="at least one record")
    columns = columns_of(records)
    if {names.get("messages", "messages"), "messages", "conversations"} & set(columns):
        return read_file(str(path), data, "auto", require_reply=False)
    candidates = (
        names.get("prompt", "prompt"),
        names.get("text", "text"),
        names.get("instruction", "instruction"),
    )
    key = next((c for c in candidates if c in columns), None)
    if key is None:
        raise UserError(
            f"no prompt column (found: {', '.join(columns) or 'none'})",
            file=str(path),
            expected="a messages, prompt, text or instruction column",
        )
    prompts = []
    for record in records:
        text, extra = record.get(key), record.get(names.get("input", "input"))
        system = record.get(names.get("system", "system"))
        if not isinstance(text, str) or not text.strip():
            raise UserError(
                f"got {text!r}", **where(path, record.get("_line")), field=key, expected="a non-empty string"
            )
        if key == candidates[2] and isinstance(extra, str) and extra.strip():
            text = f"{text}\n{extra}"
        messages = ([Message("system", system)] if isinstance(system, str) and system else []) + [
            Message("user", text)
        ]
        prompts.append(Conversation(messages, None, record.get("_line"), str(path)))
    return prompts
