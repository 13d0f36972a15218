"""The normal form of a conversation: ``Message`` turns, the tool schemas, where it came from.

Templates (``data.templates``) turn it into token ids; ``data.conversation`` reads files into it. Nothing here
knows about tokenizers or file layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One turn. ``tool_calls`` (assistant only) are OpenAI-style with parsed arguments:
    ``[{"type": "function", "function": {"name": str, "arguments": dict}}]``. ``learn=False`` (an assistant turn
    the ChatGLM3 demo marks ``"loss": false``): its tokens are context, not labels."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    learn: bool = True


@dataclass
class Conversation:
    """A checked conversation: ends with an assistant turn, system (if any) first, every tool call declared."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    line: int | None = None  # the record's position in ``source`` (see data.read.where)
    source: str = ""

    @property
    def system(self) -> str | None:
        """The system text, if the first message is a system message."""
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None


def tool_names(tools: Sequence[dict[str, Any]] | None) -> list[str]:
    """The function names declared in ``tools`` (OpenAI ``{"function": {"name"}}`` or bare ``{"name"}``)."""
    return [tool.get("function", tool)["name"] for tool in tools or []]


__all__ = ["ROLES", "Conversation", "Message", "tool_names"]
