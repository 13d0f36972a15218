"""Formats a model's tokenizer provides itself (``tokenizer.chat_format()``), as ``ChatFormat``s.

Some models build a conversation's ids turn by turn with their own tokenizer instead of rendering one string
(their chat format lives in the tokenizer class, not in a Jinja template). Such a tokenizer declares it with a
``chat_format()`` method returning a ``TokenizerChatFormat``; ``TokenizerFormat`` turns its dict-based methods
into the ``ChatFormat`` every caller uses, and its ValueErrors into UserErrors. Ids and labels are the format's
own (the official ones of the model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.conversation import Message
from glmtune.data.templates.base import TokenizerChatFormat, hf_messages
from glmtune.data.templates.registry import TOKENIZER_FORMATS


class TokenizerFormat:
    """A ``TokenizerChatFormat`` bound to its tokenizer, seen as a ``ChatFormat``."""

    def __init__(self, provided: TokenizerChatFormat):
        self.provided = provided
        self.name = provided.name
        self.parses_tool_calls = bool(provided.parses_tool_calls)
        self.renders_tools = True  # a model's own format builds its tool turns (registry.tool_template_names)
        self.family = TOKENIZER_FORMATS.get(provided.name, provided.name)

    def _call(self, method: Callable, messages: Sequence[Message], tools: list | None) -> Any:
        try:
            return method(hf_messages(messages), tools)
        except ValueError as error:
            raise UserError(
                str(error), field="template", expected=f"a conversation {self.family} can express"
            ) from None

    def encode(
        self, tokenizer: Any, messages: Sequence[Message], tools: list | None, train_on_prompt: bool
    ) -> tuple[list[int], list[int]]:
        ids, labels = self._call(self.provided.encode_conversation, messages, tools)
        return (ids, list(ids)) if train_on_prompt else (ids, labels)

    def prompt(self, messages: Sequence[Message], tools: list | None) -> list[int]:
        return self._call(self.provided.encode_prompt, messages, tools)

    def stop_ids(self) -> list[int]:
        return self.provided.stop_ids()

    def parse_reply(self, text: str) -> dict[str, Any]:
        """``{"content"}``, or (when the format parses tool calls) a tool call ``{"name", "parameters"}``."""
        return self.provided.parse_reply(text)

    def reply_text(self, text: str) -> str:
        return self.provided.reply_text(text)


__all__ = ["TokenizerFormat"]
