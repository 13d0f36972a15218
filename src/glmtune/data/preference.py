"""Preference data (``task: preference``): records → checked examples → token ids → padded batches.

Formats, told apart by their fields (one record's mistake is one ``UserError`` naming file, line and field):

* pairs, TRL's convention: ``{"prompt" | "messages", "chosen", "rejected"}``: the prompt a string or a message
  list, each response a string, an assistant message or a one-message list; or no prompt at all and two whole
  conversations (``chosen``/``rejected`` message lists), the prompt being what they share;
* pairs, LLaMA-Factory's sharegpt: ``{"conversations": [{"from", "value"}...], "chosen": {"from": "gpt",
  "value"}, "rejected": {...}}``;
* unpaired, KTO's: ``{"prompt" | "messages", "completion", "label": true | false}``.

Encoding reuses SFT's chat templates and label masks (``data.templates``): the prompt is encoded once and shared
by both responses (a row is prompt ids + response ids), only the final response is learned (its end-of-turn
token included), early rounds of a long prompt are dropped whole, and a response too long for
``train.max_seq_len`` is cut before its end-of-turn tokens, which stay. A prompt that leaves no room is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from glmtune.core.errors import UserError
from glmtune.data.conversation import conversations_from_records
from glmtune.data.conversation_formats import Where
from glmtune.data.encode import grouped_loader
from glmtune.data.messages import Conversation, Message
from glmtune.data.read import LINE_KEY, Record
from glmtune.data.templates import IGNORE_INDEX
from glmtune.data.templates.base import common_prefix
from glmtune.data.templates.encode import _rounds  # SFT's rounds: truncation drops the same units

PAIR_FIELDS = ("chosen", "rejected")


@dataclass
class PreferenceExample:
    """A prompt and its responses: ``chosen`` and ``rejected`` (pairs), or ``chosen`` = the completion and
    ``desirable`` its label (KTO; ``rejected`` None)."""

    prompt: list[Message]
    tools: list[dict[str, Any]] | None
    chosen: Message
    rejected: Message | None
    desirable: bool | None
    source: str
    line: int | None

    @property
    def paired(self) -> bool:
        return self.rejected is not None

    def conversation(self) -> Conversation:
        """The prompt and the chosen response as a conversation (what template resolution looks at: tools)."""
        return Conversation(self.prompt + [self.chosen], self.tools, self.line, self.source)


# --------------------------------------------------------------------------- records → examples


def _prompt_messages(
    turns: Any, at: Where, field: str, fmt: str, tools: Any = None
) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """A prompt (string or turn list) as checked messages ending with the user's (or a tool's) turn."""
    if isinstance(turns, str):
        if not turns.strip():
            raise at.error("empty prompt", field=field, expected="a non-empty prompt")
        return [Message("user", turns)], None
    key = "conversations" if fmt == "sharegpt" else "messages"
    record = {key: turns, LINE_KEY: at.line, **({"tools": tools} if tools is not None else {})}
    try:
        conv = conversations_from_records([record], at.path, fmt, require_reply=False)[0]
    except UserError as error:
        raise at.error(
            error.message, field=field + _after(error.field, key), expected=error.expected
        ) from None
    if conv.messages[-1].role == "assistant":
        raise at.error(
            "the prompt ends with an assistant turn", field=field, expected="a user or tool turn last"
        )
    return conv.messages, conv.tools


def _after(field: str | None, key: str) -> str:
    return field[len(key) :] if field and field.startswith(key) else ""


def _response(value: Any, at: Where, field: str, fmt: str, tools: Any = None) -> Message:
    """A response: a string, an assistant message (``{"role", "content"}`` or ``{"from", "value"}``), or a list
    holding one; empty responses are refused."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        message = Message("assistant", value)
    elif isinstance(value, dict):
        key = "conversations" if "from" in value else "messages"
        user = {"from": "human", "value": "?"} if key == "conversations" else {"role": "user", "content": "?"}
        record = {key: [user, value], LINE_KEY: at.line, **({"tools": tools} if tools is not None else {})}
        try:
            message = conversations_from_records([record], at.path, fmt if fmt == "sharegpt" else "auto")[
                0
            ].messages[-1]
        except UserError as error:
            raise at.error(error.message, field=field, expected="an assistant message with content") from None
    else:
        raise at.error(
            f"got {type(value).__name__}", field=field, expected="a string or one assistant message"
        )
    if message.role != "assistant":
        raise at.error(f"a {message.role} turn", field=field, expected="the assistant's response")
    if not message.content.strip() and not message.tool_calls:
        raise at.error("empty response", field=field, expected="a non-empty response")
    return message


def _implicit_prompt(record: Record, at: Where, declared: Any) -> tuple[list[Message], Message, Message, Any]:
    """TRL's implicit prompt: two whole conversations; the prompt is what they share up to the last user turn."""
    convs = []
    for name in PAIR_FIELDS:
        turns = record[name]
        if not isinstance(turns, list) or len(turns) < 2:
            raise at.error("no prompt", field="prompt", expected='a "prompt" or "messages" field')
        convs.append(
            _prompt_messages(turns[:-1], at, name, "auto", declared)
            + (_response(turns[-1], at, name, "auto", declared),)
        )
    (prompt, tools, chosen), (other, _, rejected) = convs
    if prompt != other:
        raise at.error(
            "chosen and rejected differ before their last turn", field="rejected", expected="one prompt"
        )
    return prompt, chosen, rejected, tools


def example_from_record(record: Record, source: str) -> PreferenceExample:
    """One record of any preference format (see the module docstring) → a checked example."""
    at = Where(str(record.get("_source", source)), record.get(LINE_KEY))
    prompt_key = next((k for k in ("prompt", "messages", "conversations") if record.get(k) is not None), None)
    fmt = "sharegpt" if prompt_key == "conversations" else "auto"
    declared = record.get("tools")  # the record's tool schemas: prompts and responses may call them
    if "completion" in record or "label" in record:  # KTO
        if not isinstance(record.get("label"), bool):
            raise at.error(f"got {record.get('label')!r}", field="label", expected="true or false (KTO data)")
        if prompt_key is None:
            raise at.error("no prompt", field="prompt", expected='a "prompt" or "messages" field')
        prompt, tools = _prompt_messages(record[prompt_key], at, prompt_key, fmt, declared)
        completion = _response(record.get("completion"), at, "completion", fmt, tools)
        return PreferenceExample(prompt, tools, completion, None, record["label"], at.path, at.line)
    for name in PAIR_FIELDS:
        if record.get(name) in (None, "", []):
            raise at.error("missing or empty", field=name, expected="a non-empty response")
    if prompt_key is None:
        prompt, chosen, rejected, tools = _implicit_prompt(record, at, declared)
    else:
        prompt, tools = _prompt_messages(record[prompt_key], at, prompt_key, fmt, declared)
        chosen = _response(record["chosen"], at, "chosen", fmt, tools)
        rejected = _response(record["rejected"], at, "rejected", fmt, tools)
    if chosen == rejected:
        raise at.error(
            "the rejected response equals the chosen one", field="rejected", expected="a different response"
        )
    return PreferenceExample(prompt, tools, chosen, rejected, None, at.path, at.line)


def examples_from_records(records: Sequence[Record], source: str) -> list[PreferenceExample]:
    """Every record, checked, in order; the file must not mix pairs with KTO's unpaired examples."""
    examples = [example_from_record(record, source) for record in records]
    kinds = {example.paired for example in examples}
    if len(kinds) > 1:
        odd = next(e for e in examples if e.paired != examples[0].paired)
        raise UserError(
            "pairs and unpaired (KTO) examples in one file",
            file=odd.source,
            line=odd.line,
            expected="one kind per file",
        )
    return examples


# --------------------------------------------------------------------------- examples → ids


class EncodedExample(NamedTuple):
    """Token ids: the shared ``prompt``, then each response's ids and labels (-100: not learned)."""

    prompt: list[int]
    responses: list[
        tuple[list[int], list[int]]
    ]  # [(chosen ids, labels), (rejected ids, labels)] or [completion]
    desirable: bool | None
    truncated: bool
    kl: tuple[list[int], list[int]] | None = (
        None  # KTO: the mismatched completion (ids, labels) of the KL term
    )


def _encode_with(
    tokenizer: Any, fmt: Any, prompt: list[Message], example: PreferenceExample
) -> EncodedExample:
    prompt_ids = fmt.prompt(prompt, example.tools)  # encoded once, shared by every response
    full = [fmt.encode(tokenizer, prompt + [r], example.tools, False) for r in _responses(example)]
    # Where a response starts: after the prompt (a template may render the last prompt token differently).
    start = min(common_prefix(prompt_ids, ids) for ids, _ in full)
    responses = [(ids[start:], labels[start:]) for ids, labels in full]
    return EncodedExample(prompt_ids[:start], responses, example.desirable, False)


def _responses(example: PreferenceExample) -> list[Message]:
    return [example.chosen] + ([example.rejected] if example.rejected is not None else [])


def _tail(ids: list[int], stops: set[int]) -> int:
    """How many tokens end the response from its last stop id (end-of-turn) on; 0 without one."""
    last = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] in stops), len(ids))
    return len(ids) - last


def _cut(ids: list[int], labels: list[int], room: int, stops: set[int]) -> tuple[list[int], list[int]]:
    """The response cut to ``room`` tokens, its end-of-turn tail kept."""
    if len(ids) <= room:
        return ids, labels
    tail = _tail(ids, stops)
    keep = room - tail
    return ids[:keep] + ids[len(ids) - tail :], labels[:keep] + labels[len(labels) - tail :]


def encode_example(tokenizer: Any, fmt: Any, example: PreferenceExample, max_seq_len: int) -> EncodedExample:
    """``example`` → ids within ``max_seq_len`` per row (see the module docstring); a prompt that leaves no room
    for its response's first token and end-of-turn is a UserError at the example's file and line."""
    system, rounds = _rounds(example.prompt)
    encoded = None
    for first in range(len(rounds)):  # oldest rounds dropped whole until every row fits
        encoded = _encode_with(tokenizer, fmt, system + [m for r in rounds[first:] for m in r], example)
        longest = max(len(ids) for ids, _ in encoded.responses)
        if len(encoded.prompt) + longest <= max_seq_len:
            return encoded._replace(truncated=first > 0)
    assert encoded is not None
    room = max_seq_len - len(encoded.prompt)
    stops = set(fmt.stop_ids())
    if any(room - _tail(ids, stops) < 1 for ids, _ in encoded.responses):
        raise UserError(
            f"the prompt takes {len(encoded.prompt)} tokens, leaving no room for the response",
            file=example.source,
            line=example.line,
            field="prompt",
            expected=f"a prompt well under train.max_seq_len={max_seq_len} tokens (or a larger train.max_seq_len)",
        )
    responses = [_cut(ids, labels, room, stops) for ids, labels in encoded.responses]
    return encoded._replace(responses=responses, truncated=True)


# --------------------------------------------------------------------------- batches


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` [rows, longest] of (ids, labels) rows."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [rows, width]
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [rows, width]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [rows, width]
    for row, (ids, learned) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(learned)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_preference(
    batch: list[tuple[int, EncodedExample]], pad_id: int, max_seq_len: int
) -> dict[str, Any]:
    """Pairs: one forward's rows, every chosen row then every rejected row ([2·pairs, longest]). KTO: the
    completions [examples, longest], ``desirable`` [examples] and the mismatched ``kl_*`` rows (each example's prompt with
    its ``kl`` completion, cut to ``max_seq_len``) that estimate KTO's KL term. ``index`` [batch]."""
    index = torch.tensor([i for i, _ in batch], dtype=torch.long)  # [batch]
    examples = [e for _, e in batch]
    prompt_labels = [[IGNORE_INDEX] * len(e.prompt) for e in examples]
    if len(examples[0].responses) == 2:
        rows = [
            (e.prompt + e.responses[side][0], masked + e.responses[side][1])
            for side in (0, 1)
            for e, masked in zip(examples, prompt_labels)
        ]
        return {**_pad(rows, pad_id), "index": index}
    rows = [
        (e.prompt + e.responses[0][0], masked + e.responses[0][1])
        for e, masked in zip(examples, prompt_labels)
    ]
    out = {**_pad(rows, pad_id), "index": index}
    out["desirable"] = torch.tensor([bool(e.desirable) for e in examples])  # [examples]
    kl_rows = [
        ((e.prompt + e.kl[0])[:max_seq_len], (masked + e.kl[1])[:max_seq_len])
        for e, masked in zip(examples, prompt_labels)
        if e.kl is not None
    ]
    out.update({f"kl_{k}": v for k, v in _pad(kl_rows, pad_id).items()})
    return out


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[EncodedExample]):
        self.examples = list(examples)
        self.lengths = [len(e.prompt) + max(len(ids) for ids, _ in e.responses) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, EncodedExample]:
        return index, self.examples[index]


def make_preference_loader(
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_id: int,
    max_seq_len: int,
    *,
    seed: int = 0,
    shuffle: bool = False,
    group_by_length: bool = True,
) -> DataLoader:
    """Length-grouped batches of encoded examples (``collate_preference``)."""
    dataset = _Examples(examples)
    collate = partial(collate_preference, pad_id=pad_id, max_seq_len=max_seq_len)
    return grouped_loader(dataset, collate, batch_size, seed, shuffle, group_by_length)


__all__ = [
    "EncodedExample",
    "PreferenceExample",
    "collate_preference",
    "encode_example",
    "example_from_record",
    "examples_from_records",
    "make_preference_loader",
]
