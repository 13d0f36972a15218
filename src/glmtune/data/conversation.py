"""Conversations: the one normal form every generative dataset is read into, from four common file layouts.

A ``Conversation`` is a list of ``Message``s (roles ``system``, ``user``, ``assistant``, ``tool``), the tool
schemas the assistant may call, and where it came from. Templates (``data.templates``) turn it into token ids;
nothing here knows about tokenizers.

Formats, detected per file from its fields (``data.format_detect``; or named with ``format=``), each field under
its ``data.columns`` name when mapped:

* ``alpaca``: ``instruction``, optional ``input`` (appended after a newline), ``output``, optional ``system``,
  ``tools`` and ``history`` (``[[question, answer], ...]`` before the instruction).
* ``messages`` (OpenAI style, and the ChatGLM3 finetune demo's): ``messages`` or ``conversations``: ``[{role,
  content}]`` with roles system/user/assistant/tool (or ``observation``), optional ``tools`` (JSON schemas, in
  the record or, as ChatGLM3's demo writes them, in the system turn) and assistant ``tool_calls``
  (``[{"type": "function", "function": {"name", "arguments"}}]``, arguments as an object or a JSON string);
  the demo's ``{"role": "tool", "name", "parameters", "observation"}`` is a call and its result.
* ``sharegpt``: ``conversations: [{from, value}]`` with from human/gpt/system/function_call/observation,
  optional ``system`` and ``tools``; a ``function_call`` value is ``{"name", "arguments"}`` as JSON.
* ``prompt_completion``: ``prompt``, ``completion`` (one user turn, one reply), optional ``system``.

Turn keys and role names other than these are LLaMA-Factory's tags in ``data.columns`` (``role_tag``,
``content_tag``, ``user_tag``, ...). In CSV files the list columns (``messages``, ``conversations``,
``history``, ``tools``) hold JSON text.
Every mistake is one ``UserError`` naming the file, the line and the field path (``messages[2].content``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from glmtune.core.errors import UserError
from glmtune.data.columns import Keys
from glmtune.data.conversation_formats import PARSERS, Where, check
from glmtune.data.format_detect import FORMAT_HELP, FORMATS, detect_layout
from glmtune.data.messages import ROLES, Conversation, Message, tool_names
from glmtune.data.read import LINE_KEY, Record, read_records


def conversations_from_records(
    records: list[Record],
    source: str | Path,
    format: str = "auto",
    *,
    require_reply: bool = True,
    columns: Mapping[str, str] | None = None,
) -> list[Conversation]:
    """Records (from ``read_records`` or a built-in dataset) → checked Conversations, in order.

    ``format`` is one of ``FORMATS`` or ``"auto"`` (told once for all records by their fields); ``columns``
    the file's own field names (``data.columns``). A record's own ``"_source"`` (built-in datasets spread over
    files) takes precedence over ``source`` in errors. ``require_reply=False`` reads prompts: conversations
    that end with a user (or tool) turn, to be answered.
    """
    source = str(source)
    name = format.replace("-", "_")
    if name != "auto" and name not in PARSERS:
        raise UserError(f"unknown format '{format}'", field="format", expected="auto or " + FORMAT_HELP)
    layout = detect_layout(records, source, name, Keys.of(columns))
    parse = PARSERS[layout.format]
    conversations = []
    for record in records:
        origin = str(record.get("_source", source))
        at = Where(origin, record.get(LINE_KEY))
        messages, tools = parse(record, at, layout)
        check(messages, tools, at, require_reply)
        conversations.append(Conversation(messages, tools, at.line, origin))
    return conversations


def load_conversations(
    path: str | Path,
    format: str = "auto",
    *,
    columns: Mapping[str, str] | None = None,
    encoding: str = "auto",
    sheet: str | None = None,
) -> list[Conversation]:
    """All conversations of a JSONL/JSON/CSV/TSV/Parquet/xlsx file (``format``, ``columns``: see the module
    docstring; ``encoding``, ``sheet``: see ``read_records``)."""
    return conversations_from_records(
        read_records(path, encoding=encoding, sheet=sheet), path, format, columns=columns
    )


def load_builtin_conversations(name: str) -> list[Conversation]:
    """The conversations of a built-in generation dataset (``glmtune data list``)."""
    from glmtune.data.builtin import dataset_for

    dataset = dataset_for(name, "generation")
    return conversations_from_records(dataset.loader(), name, dataset.format)


# --------------------------------------------------------------------------- mixing


def mix(
    datasets: Sequence[Sequence[Conversation]], weights: Sequence[float], seed: int
) -> list[Conversation]:
    """Several datasets as one shuffled list, each used ``weight`` times.

    A weight is a multiplier on the dataset's size: 2 repeats every example twice, 0.5 takes a seeded half
    (without replacement), 1.5 is all of it plus a seeded half. The same seed gives the same list.
    """
    if len(weights) != len(datasets):
        raise UserError(
            f"{len(weights)} weights for {len(datasets)} datasets",
            field="weights",
            expected="one per dataset",
        )
    for weight in weights:
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise UserError(f"got {weight!r}", field="weights", expected="finite numbers >= 0")
    if not any(weight > 0 and len(data) for weight, data in zip(weights, datasets)):
        raise UserError("nothing to train on: every weight or dataset is empty", field="weights")
    rng = random.Random(seed)
    mixed: list[Conversation] = []
    for data, weight in zip(datasets, weights):
        whole, fraction = divmod(float(weight), 1.0)
        mixed.extend(list(data) * int(whole))
        mixed.extend(rng.sample(list(data), round(fraction * len(data))))
    rng.shuffle(mixed)
    return mixed


__all__ = [
    "FORMATS",
    "ROLES",
    "Conversation",
    "Message",
    "conversations_from_records",
    "load_builtin_conversations",
    "load_conversations",
    "mix",
    "tool_names",
]
