"""Conversations → ``input_ids`` and ``labels`` through a template, truncating whole rounds to fit.

Truncation never cuts through a turn: early rounds (a user turn and everything up to the next user turn) are
dropped whole, oldest first, keeping the system message and tools, until the rest fits ``max_seq_len``. When
not even the last round fits, the example is dropped (``EncodedConversation.dropped``) and counted, never
mangled. Tools are never dropped either: a conversation with tool schemas, calls or results and a template
that cannot render them is an error at its file and line, naming the templates that can.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation, Message
from glmtune.data.read import where
from glmtune.data.templates.base import uses_tools
from glmtune.data.templates.resolve import resolve_template, tool_templates


class EncodedConversation(NamedTuple):
    """Token ids and labels (``-100`` = not learned) of one conversation.

    ``truncated``: early rounds were dropped to fit. ``dropped``: not even the last round fits
    ``max_seq_len``; ``input_ids`` and ``labels`` are then empty and the example must be skipped.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    dropped: bool = False


class EncodedConversations(NamedTuple):
    """The encodable examples of a dataset, and how many were cut (``num_truncated``) or left out (``num_dropped``);
    ``kept``: the position of each example's conversation in the input (the dropped ones are missing)."""

    examples: list[EncodedConversation]
    num_truncated: int
    num_dropped: int
    kept: tuple[int, ...] = ()


def _rounds(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(the system message if any, rounds): each round starts at a user turn and runs to the next one."""
    system = [messages[0]] if messages and messages[0].role == "system" else []
    rounds: list[list[Message]] = []
    for message in messages[len(system) :]:
        if message.role == "user" or not rounds:
            rounds.append([])
        rounds[-1].append(message)
    return system, rounds


def _tools_refused(tokenizer: Any, fmt: Any, at: dict[str, Any]) -> UserError:
    """The error for tools that ``fmt`` cannot render (``at``: the conversation's file and line)."""
    own = " (the tokenizer's own chat template)" if fmt.name == "auto" else ""
    able = tool_templates(tokenizer)
    return UserError(
        f"the conversation has tools, tool calls or tool results, which template '{fmt.name}'{own} cannot "
        "render (they would be lost)",
        **at,
        field="template",
        expected="a template that renders tools: " + ", ".join(able)
        if able
        else "a model whose chat template renders tools (no template renders them with this tokenizer)",
    )


def encode_conversation(
    tokenizer: Any,
    conv: Conversation,
    template: str | Any = "auto",
    *,
    max_seq_len: int,
    train_on_prompt: bool = False,
) -> EncodedConversation:
    """One conversation → ids and labels (every assistant turn and its end-of-turn token learned).

    ``template``: ``"auto"``, a built-in name (``template_names()``), or a format from ``resolve_template``
    (resolve once when encoding many). Early rounds are dropped whole to fit ``max_seq_len`` (system kept);
    if the last round alone does not fit, the result is empty with ``dropped=True``.
    """
    if max_seq_len < 1:
        raise UserError(f"got {max_seq_len}", field="train.max_seq_len", expected="a positive number")
    with_tools = uses_tools(conv.messages, conv.tools)
    fmt = resolve_template(tokenizer, template, tools=with_tools) if isinstance(template, str) else template
    if with_tools and not fmt.renders_tools:
        raise _tools_refused(tokenizer, fmt, where(conv.source, conv.line) if conv.source else {})
    system, rounds = _rounds(conv.messages)

    def encode_from(first: int) -> tuple[list[int], list[int]]:
        kept = system + [message for group in rounds[first:] for message in group]
        return fmt.encode(tokenizer, kept, conv.tools, train_on_prompt)

    ids, labels = encode_from(0)
    if len(ids) <= max_seq_len:
        return EncodedConversation(ids, labels)
    # Fewer rounds are never longer: binary search for the first round to keep.
    low, high, best = 1, len(rounds) - 1, None
    while low <= high:
        middle = (low + high) // 2
        ids, labels = encode_from(middle)
        if len(ids) <= max_seq_len:
            best, high = (ids, labels), middle - 1
        else:
            low = middle + 1
    if best is None:
        return EncodedConversation([], [], truncated=True, dropped=True)
    return EncodedConversation(best[0], best[1], truncated=True)


def resolve_for(tokenizer: Any, template: str | Any, *splits: Sequence[Conversation]) -> Any:
    """The one format for every conversation of ``splits``: ``template`` resolved knowing whether any of them has
    tools (``auto`` then prefers a format that renders them); a format already resolved is returned as is. A
    format that cannot render the tools some conversation has is an error at that conversation's file and line,
    naming the templates that can."""
    if not isinstance(template, str):
        return template
    with_tools = [conv for split in splits for conv in split if uses_tools(conv.messages, conv.tools)]
    fmt = resolve_template(tokenizer, template, tools=bool(with_tools))
    if with_tools and not fmt.renders_tools:
        first = with_tools[0]
        raise _tools_refused(tokenizer, fmt, where(first.source, first.line) if first.source else {})
    return fmt


def encode_conversations(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    template: str | Any = "auto",
    *,
    max_seq_len: int,
    train_on_prompt: bool = False,
) -> EncodedConversations:
    """Every conversation that fits (in order), with counts of the truncated and the dropped ones. ``template``: a
    name (resolved once for all of them, ``resolve_for``) or a format from ``resolve_for``."""
    fmt = resolve_for(tokenizer, template, conversations)
    examples, kept, truncated, dropped = [], [], 0, 0
    for index, conv in enumerate(conversations):
        encoded = encode_conversation(
            tokenizer, conv, fmt, max_seq_len=max_seq_len, train_on_prompt=train_on_prompt
        )
        if encoded.dropped:
            dropped += 1
            continue
        truncated += encoded.truncated
        examples.append(encoded)
        kept.append(index)
    return EncodedConversations(examples, truncated, dropped, tuple(kept))


def encode_prompt(
    tokenizer: Any,
    messages: Conversation | Sequence[Message],
    template: str | Any = "auto",
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """A generation prompt: the conversation so far, ending with the assistant's header (the model replies).

    ``tools`` defaults to the conversation's own when ``messages`` is a Conversation. ``template``: a name, or a
    format already resolved (a run's: its prompts use the format it trained with).
    """
    if isinstance(messages, Conversation):
        tools = messages.tools if tools is None else tools
        messages = messages.messages
    with_tools = uses_tools(messages, tools)
    fmt = resolve_template(tokenizer, template, tools=with_tools) if isinstance(template, str) else template
    if with_tools and not fmt.renders_tools:
        raise _tools_refused(tokenizer, fmt, {})
    return fmt.prompt(list(messages), tools)


def stop_ids(tokenizer: Any, template: str = "auto") -> list[int]:
    """The token ids that end a reply: the template's end-of-turn token, then EOS (no duplicates)."""
    return resolve_template(tokenizer, template).stop_ids()


__all__ = [
    "EncodedConversation",
    "EncodedConversations",
    "encode_conversation",
    "encode_conversations",
    "encode_prompt",
    "resolve_for",
    "stop_ids",
]
