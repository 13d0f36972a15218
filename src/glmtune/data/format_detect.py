"""Which conversation format a file is in, told by its fields (not by key names alone): a ``Layout``.

A list column (``messages`` or ``conversations``, or the one ``data.columns.messages`` names) is a conversation;
its turns say how to read it: ``from``/``value`` keys are sharegpt, ``role``/``content`` keys the messages
format (OpenAI's, and the ChatGLM3 finetune demo's ``conversations``), whatever the column is called. Otherwise
the columns do: ``instruction`` + ``output`` is alpaca, ``prompt`` + ``completion`` is prompt_completion
(each under its ``data.columns`` name). A file that fits none or several is one UserError naming what it looked
like and the one setting that settles it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.columns import Keys
from glmtune.data.read import Record, columns_of

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion")
FORMAT_HELP = (
    "one of: messages ('messages' or 'conversations' turns with role/content), sharegpt ('conversations' "
    "turns with from/value), alpaca ('instruction' + 'output'), prompt_completion ('prompt' + 'completion')"
)
_TURN_KEYS = {"sharegpt": ("from", "value"), "messages": ("role", "content")}
_SAMPLE = 50  # records looked at to tell the turns' keys


@dataclass(frozen=True)
class Layout:
    """How to read a file's records: the format, the file's names (``keys``) and, for conversations, the list
    column (``turns``) and the keys of each turn's role and text."""

    format: str
    keys: Keys
    turns: str | None = None
    role: str | None = None
    content: str | None = None


def _turn_items(records: list[Record], column: str) -> list[dict[str, Any]]:
    """The turns of the first records' ``column`` (a list, or JSON text of one), to look at their keys."""
    items: list[dict[str, Any]] = []
    for record in records[:_SAMPLE]:
        value = record.get(column)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                continue  # reported with its line when the record is read
        if isinstance(value, list):
            items += [item for item in value if isinstance(item, dict)]
    return items


def _turn_layout(
    records: list[Record], column: str, keys: Keys, source: str, default: str = "messages"
) -> Layout:
    """The layout of a conversation list column: the role and content keys from the tags or the turns
    (``default``'s keys when there are no turns to look at: the records' own errors then say what is wrong)."""
    role, content = keys.tag("role_tag"), keys.tag("content_tag")
    items = _turn_items(records, column)
    seen = list(dict.fromkeys(key for item in items for key in item))
    if role is None and not seen:
        role = _TURN_KEYS[default][0]
    if role is None:
        kinds = [name for name, (r, _) in _TURN_KEYS.items() if r in seen]
        if len(kinds) != 1:
            problem = "both 'from' and 'role'" if kinds else f"keys {', '.join(seen) or 'none'}"
            raise UserError(
                f"the turns of '{column}' have {problem}, so their speaker and text keys are unclear",
                file=source,
                field=column,
                expected="turns with from/value (sharegpt) or role/content (messages), or "
                "data.columns: {role_tag: <speaker key>, content_tag: <text key>}",
            )
        role = _TURN_KEYS[kinds[0]][0]
    if content is None:
        default = "value" if role == "from" else "content"
        content = default if default in seen or role in ("from", "role") else None
        if content is None:
            raise UserError(
                f"the turns of '{column}' have keys {', '.join(seen)}; which one holds the text?",
                file=source,
                field=column,
                expected="data.columns: {content_tag: <text key>}",
            )
    name = "sharegpt" if role == "from" else "messages"
    return Layout(name, keys, column, role, content)


def _turn_column(records: list[Record], keys: Keys, prefer: str, source: str) -> str | None:
    """The conversation list column: ``data.columns.messages``, else ``messages``/``conversations``."""
    columns = columns_of(records)
    if keys.given("messages"):
        return keys.column("messages")
    present = [c for c in ("messages", "conversations") if c in columns]
    if len(present) == 2 and not prefer:
        raise UserError(
            "both a 'messages' and a 'conversations' column",
            file=source,
            expected="data.columns: {messages: <the one to read>}",
        )
    if prefer in present:
        return prefer
    return present[0] if present else None


def detect_layout(
    records: list[Record], source: str, format: str = "auto", keys: Keys | None = None
) -> Layout:
    """The layout of ``records``: the named ``format`` (one of ``FORMATS``) or, for ``auto``, the one their
    fields fit (see the module docstring); none or several is a UserError naming the setting that settles it."""
    keys = keys or Keys()
    if format in ("alpaca", "prompt_completion"):
        return Layout(format, keys)
    if format in ("messages", "sharegpt"):
        prefer = "messages" if format == "messages" else "conversations"
        column = _turn_column(records, keys, prefer, source) or (
            keys.column("messages") if keys.given("messages") else prefer
        )
        return _turn_layout(records, column, keys, source, format)
    columns = columns_of(records)
    signatures = {
        "alpaca": (keys.column("instruction"), keys.column("output")),
        "prompt_completion": (keys.column("prompt"), keys.column("completion")),
    }
    found = [name for name, needed in signatures.items() if all(c in columns for c in needed)]
    column = _turn_column(records, keys, "", source)
    if column is not None and column in columns:
        found.insert(0, "conversation")
    if len(found) > 1:
        names = ["messages/sharegpt" if name == "conversation" else name for name in found]
        raise UserError(
            f"the columns fit several formats ({', '.join(names)})",
            file=source,
            expected=f"data.format set to the one to read, e.g. data.format: {found[-1]}",
        )
    if found == ["conversation"]:
        assert column is not None
        return _turn_layout(records, column, keys, source)
    if found:
        return Layout(found[0], keys)
    texts = [c for c in columns if any(isinstance(r.get(c), str) for r in records[:_SAMPLE])]
    hint = f"; or map yours, e.g. data.columns: {{instruction: {texts[0]}, output: {texts[-1]}}}"
    raise UserError(
        f"cannot tell the conversation format from the columns ({', '.join(columns) or 'none'})",
        file=source,
        expected=FORMAT_HELP + (hint if len(texts) >= 2 else ""),
    )


__all__ = ["FORMATS", "FORMAT_HELP", "Layout", "detect_layout"]
