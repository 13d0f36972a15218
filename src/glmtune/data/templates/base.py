"""What a chat format is: the interface every resolved template offers, the one a model's tokenizer may provide
(``tokenizer.chat_format()``), and the small tokenizer helpers the formats share.

Whatever differs between formats is a capability declared here (``parses_tool_calls``, ``reply_text``, ...),
so no caller ever tests a format's name or class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from glmtune.data.conversation import Message

BOUNDARY_SLACK = 2  # tokens a BPE merge across a turn boundary may change; more means the template re-renders


@runtime_checkable
class ChatFormat(Protocol):
    """A template bound to a tokenizer, as ``resolve_template`` returns it (the SFT task, ``infer``, the server).

    ``name``: the template's name (``describe``, logs). ``parses_tool_calls``: ``parse_reply`` can read a reply
    back as a tool call ``{"name", "parameters"}`` (else it always gives ``{"content"}``). ``renders_tools``:
    tool schemas, tool calls and tool results are written into the ids (else a conversation with any of them is
    refused, never encoded without them).
    """

    name: str
    parses_tool_calls: bool
    renders_tools: bool

    def encode(
        self, tokenizer: Any, messages: Sequence[Message], tools: list | None, train_on_prompt: bool
    ) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation and its labels (``-100``: not learned)."""
        ...

    def prompt(self, messages: Sequence[Message], tools: list | None) -> list[int]:
        """A generation prompt: the conversation so far, then the assistant's header."""
        ...

    def stop_ids(self) -> list[int]:
        """The token ids that end a reply."""
        ...

    def parse_reply(self, text: str) -> dict[str, Any]:
        """A generated reply as a message: ``{"content"}``, or a tool call when ``parses_tool_calls``."""
        ...

    def reply_text(self, text: str) -> str:
        """A generated reply's text as a reader sees it (without what the format writes before every answer)."""
        ...


@runtime_checkable
class TokenizerChatFormat(Protocol):
    """A chat format a model's tokenizer provides itself, returned by its ``chat_format()`` method: token ids
    built turn by turn, not a rendered string. Satisfied structurally (the model's package imports nothing of
    glmtune). Messages are OpenAI-style dicts (``role``, ``content``, assistant ``tool_calls`` with parsed
    ``arguments``); a conversation the format cannot express raises ValueError."""

    name: str
    parses_tool_calls: bool

    def encode_conversation(
        self, messages: Iterable[Mapping[str, Any]], tools: Any = None
    ) -> tuple[list[int], list[int]]: ...

    def encode_prompt(self, messages: Iterable[Mapping[str, Any]], tools: Any = None) -> list[int]: ...

    def stop_ids(self) -> list[int]: ...

    def parse_reply(self, text: str) -> dict: ...

    def reply_text(self, text: str) -> str: ...


def tokenizer_chat_format(tokenizer: Any) -> TokenizerChatFormat | None:
    """The format ``tokenizer`` declares it provides (its ``chat_format()`` hook), or None."""
    hook = getattr(tokenizer, "chat_format", None)
    return hook() if callable(hook) else None


def uses_tools(messages: Sequence[Message], tools: Sequence[Any] | None) -> bool:
    """Whether a conversation has tool schemas, tool calls or tool results."""
    return bool(tools) or any(m.role == "tool" or m.tool_calls for m in messages)


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Exactly how ``apply_chat_template(tokenize=True)`` tokenizes a rendered conversation."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when the tokenizer reads it as one (special) token, else None."""
    ids = tokenize(tokenizer, token)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    return ids[0]


def special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special tokens and the added tokens marked special (turn markers live there)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(index for index, added in decoder.items() if getattr(added, "special", False))
    return ids


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def hf_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages as transformers' chat templates expect them (OpenAI style, arguments as objects)."""
    rendered = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = message.tool_calls
        if not message.learn:  # the ChatGLM3 format's own key for a turn not to learn (Jinja ignores it)
            item["loss"] = False
        rendered.append(item)
    return rendered


__all__ = [
    "BOUNDARY_SLACK",
    "ChatFormat",
    "TokenizerChatFormat",
    "common_prefix",
    "hf_messages",
    "single_token_id",
    "special_ids",
    "tokenize",
    "tokenizer_chat_format",
    "uses_tools",
]
