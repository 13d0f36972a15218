"""Templates that render a conversation to one string, tokenized once: the built-in ones of ``templates.yaml``
and the tokenizer's own Jinja ``chat_template``.

Labels are derived incrementally, so every span is exact whatever the template: for the ``i``-th message,
if it is the assistant's, the conversation up to it is rendered with the generation prompt and tokenized, and
so is the conversation up to and including it; where those token ids stop agreeing with the ids of the whole
conversation are the turn's first and last tokens. Inside that span the turn is learned up to and including
its end-of-turn token (``<|im_end|>``, ``<eos>``, ...), so the model learns to stop; what follows it (a
newline before the next turn) is not. Every assistant turn is learned (but one marked ``learn=False``: the
ChatGLM3 demo's ``"loss": false``); with ``train_on_prompt`` every token is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.conversation import Message
from glmtune.data.templates.base import (
    BOUNDARY_SLACK,
    common_prefix,
    hf_messages,
    single_token_id,
    special_ids,
    tokenize,
)
from glmtune.data.templates.registry import Template, template_names, tool_template_names
from glmtune.models.causal import IGNORE_INDEX


class TextFormat:
    """A template that renders a conversation to one string (built-in data or the tokenizer's Jinja)."""

    name: str
    tokenizer: Any
    end_ids: set[int]  # tokens that end an assistant turn (learned; generation stops on them)
    parses_tool_calls = False  # a reply is text: tool calls are not parsed back from text formats
    renders_tools: bool  # see base.ChatFormat

    def render(self, messages: Sequence[Message], tools: list | None, add_generation_prompt: bool) -> str:
        raise NotImplementedError

    def stop_ids(self) -> list[int]:
        raise NotImplementedError

    def parse_reply(self, text: str) -> dict[str, Any]:
        """A generated reply as a message: ``{"content": text}`` (tool calls are not parsed from text formats)."""
        return {"content": text}

    def reply_text(self, text: str) -> str:
        return text

    def prompt(self, messages: Sequence[Message], tools: list | None) -> list[int]:
        """The conversation rendered with the generation prompt, tokenized."""
        return tokenize(self.tokenizer, self.render(list(messages), tools, True))

    def encode(
        self, tokenizer: Any, messages: Sequence[Message], tools: list | None, train_on_prompt: bool
    ) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation and labels derived turn by turn (see the module docstring)."""
        ids = tokenize(tokenizer, self.render(messages, tools, False))
        if train_on_prompt:
            return ids, list(ids)
        learned = [False] * len(ids)
        previous_end = 0
        for index, message in enumerate(messages):
            if message.role != "assistant" or not message.learn:  # "loss": false: context, not labels
                continue
            if index == 0:
                start = 0
            else:
                prompt = tokenize(tokenizer, self.render(messages[:index], tools, True))
                start = self._agreeing(prompt, ids, "the conversation before an assistant turn")
            upto = tokenize(tokenizer, self.render(messages[: index + 1], tools, False))
            end = self._agreeing(upto, ids, "an assistant turn")
            if start < previous_end:
                raise self._unstable("an assistant turn")
            closing = [k for k in range(start, end) if ids[k] in self.end_ids]
            if closing:
                end = closing[-1] + 1  # learn up to the end-of-turn token, not the newline after it
            learned[start:end] = [True] * (end - start)
            previous_end = end
        return ids, [token if learn else IGNORE_INDEX for token, learn in zip(ids, learned)]

    def _agreeing(self, part: list[int], whole: list[int], what: str) -> int:
        """How far ``part`` agrees with ``whole``: all of it but a boundary merge, else the template is unusable."""
        agree = common_prefix(part, whole)
        if agree < len(part) - BOUNDARY_SLACK:
            raise self._unstable(what)
        return agree

    def _unstable(self, what: str) -> UserError:
        return UserError(
            f"template '{self.name}' renders {what} differently once later turns follow (it rewrites the "
            "history, e.g. drops reasoning), so the learned tokens cannot be located exactly",
            field="template",
            expected="a built-in template: " + ", ".join(template_names()),
        )


class BuiltinFormat(TextFormat):
    """A templates.yaml entry bound to a tokenizer (its BOS/EOS text, checked special tokens)."""

    def __init__(self, template: Template, tokenizer: Any):
        self.name, self.template, self.tokenizer = template.name, template, tokenizer
        self.renders_tools = template.tools is not None
        missing = [token for token in template.special_tokens if single_token_id(tokenizer, token) is None]
        if missing:
            raise UserError(
                f"template '{template.name}' needs {', '.join(missing)}, which the tokenizer does not have "
                "as single tokens",
                field="template",
                expected="the template the model was trained with ('auto' uses the tokenizer's own)",
            )
        bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)
        if template.bos == "required" and not bos:
            raise UserError(
                f"template '{template.name}' starts with BOS, and the tokenizer has none",
                field="template",
                expected="a tokenizer with a BOS token, or another template",
            )
        self.bos = bos if (template.bos != "none" and bos) else ""
        uses_eos = "{eos}" in template.end_of_turn + template.assistant.suffix
        if uses_eos and not eos:
            raise UserError(
                f"template '{template.name}' ends replies with EOS, and the tokenizer has none",
                field="template",
                expected="a tokenizer with an EOS token",
            )
        self._fill = lambda text: text.replace("{bos}", bos or "").replace("{eos}", eos or "")
        end = self._fill(template.end_of_turn)
        end_id = single_token_id(tokenizer, end)
        if end_id is None:
            raise UserError(
                f"template '{template.name}' ends turns with {end!r}, which is not one token of the tokenizer",
                field="template",
            )
        self.end_ids = {end_id}
        eos_id = getattr(tokenizer, "eos_token_id", None)
        self._stop = [end_id] + ([eos_id] if eos_id is not None and eos_id != end_id else [])

    def stop_ids(self) -> list[int]:
        return list(self._stop)

    def _content(self, text: str) -> str:
        return text.strip() if self.template.trim else text

    def render(self, messages: Sequence[Message], tools: list | None, add_generation_prompt: bool) -> str:
        t, fill = self.template, self._fill
        uses_tools = bool(tools) or any(m.role == "tool" or m.tool_calls for m in messages)
        if uses_tools and t.tools is None:
            raise UserError(
                f"template '{t.name}' has no format for tools, tool calls or tool results",
                field="template",
                expected=", ".join(tool_template_names())
                + ", or 'auto' with a tokenizer whose chat template supports tools",
            )
        parts = [self.bos]
        system = messages[0].content if messages and messages[0].role == "system" else t.default_system
        rest = messages[1:] if messages and messages[0].role == "system" else messages
        first_prefix = ""
        if tools:
            items = "".join(t.tools.item.format(tool=json.dumps(tool, ensure_ascii=False)) for tool in tools)
            parts += [fill(t.system.prefix), system or "", t.tools.header, items, t.tools.footer]
        elif system is not None and t.system_in_first_user is not None:
            first_prefix = system + t.system_in_first_user
        elif system is not None:
            parts += [fill(t.system.prefix), self._content(system), fill(t.system.suffix)]
        for index, message in enumerate(rest):
            head = first_prefix if index == 0 else ""
            if message.role == "tool":
                if index == 0 or rest[index - 1].role != "tool":
                    parts.append(t.tools.result_group_prefix)
                parts.append(t.tools.result.format(content=message.content))
                if index == len(rest) - 1 or rest[index + 1].role != "tool":
                    parts.append(t.tools.result_group_suffix)
            elif message.role == "assistant" and message.tool_calls:
                parts.append(t.tools.call_turn_prefix)
                if message.content:
                    parts += [t.tools.call_content_prefix, message.content]
                for call in message.tool_calls:
                    function = call["function"]
                    arguments = json.dumps(function["arguments"], ensure_ascii=False)
                    parts.append(t.tools.call.format(name=function["name"], arguments=arguments))
                parts.append(fill(t.assistant.suffix))
            else:
                turn = t.user if message.role == "user" else t.assistant
                parts += [fill(turn.prefix), head + self._content(message.content), fill(turn.suffix)]
        if add_generation_prompt:
            parts.append(fill(t.assistant.prefix))
        return "".join(parts)


class JinjaFormat(TextFormat):
    """The tokenizer's own ``chat_template``, rendered by ``apply_chat_template``."""

    name = "auto"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.end_ids = special_ids(tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        self._stop = self._probe_end_of_turn() + [eos]
        self._stop = [i for n, i in enumerate(self._stop) if i is not None and i not in self._stop[:n]]

    def render(self, messages: Sequence[Message], tools: list | None, add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                hf_messages(messages),
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        except TemplateError as error:
            message = " ".join(str(error).split())
            raise UserError(
                f"the tokenizer's chat template refuses this conversation: {message}",
                field="template",
                expected="a conversation the template supports, or a built-in template: "
                + ", ".join(template_names()),
            ) from None

    @cached_property
    def renders_tools(self) -> bool:  # type: ignore[override]
        """Whether the Jinja template writes a tool's schema, a call's arguments and a result (a probe)."""
        call = {
            "type": "function",
            "function": {"name": "glmtune_probe", "arguments": {"q": "glmtune_argument"}},
        }
        schema = {"name": "glmtune_probe", "description": "glmtune_schema", "parameters": {"type": "object"}}
        probe = [
            Message("user", "Hi"),
            Message("assistant", "", [call]),
            Message("tool", "glmtune_result"),
            Message("assistant", "Hello"),
        ]
        try:
            text = self.render(probe, [{"type": "function", "function": schema}], False)
        except Exception:  # a template that refuses tools (raise_exception, or fails on them)
            return False
        return all(mark in text for mark in ("glmtune_schema", "glmtune_argument", "glmtune_result"))

    def _probe_end_of_turn(self) -> list[int]:
        """The special token that closes an assistant turn in this template (found on a probe conversation)."""
        probe = [Message("user", "Hi"), Message("assistant", "Hello")]
        try:
            ids = tokenize(self.tokenizer, self.render(probe, None, False))
            prompt = tokenize(self.tokenizer, self.render(probe[:1], None, True))
        except UserError:
            return []
        closing = [token for token in ids[common_prefix(prompt, ids) :] if token in self.end_ids]
        return closing[:1]

    def stop_ids(self) -> list[int]:
        return list(self._stop)


__all__ = ["BuiltinFormat", "JinjaFormat", "TextFormat"]
