"""The four conversation file layouts (see ``data.conversation``): one record → checked ``Message``s and tools.

Every mistake is one ``UserError`` naming the file, the line and the field path (``messages[2].content``).
"""

from __future__ import annotations

import json
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.messages import Message, tool_names
from glmtune.data.read import Record, columns_of, where

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion")
# role names accepted in the messages format → ours ("observation": a common name for a tool result)
_MESSAGE_ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "observation": "tool",
}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


# --------------------------------------------------------------------------- small checks


class Where:
    """Where a record came from, to build errors that point at it."""

    def __init__(self, path: str, line: int | None):
        self.path, self.line = path, line

    def error(self, message: str, field: str | None = None, expected: str | None = None) -> UserError:
        return UserError(message, **where(self.path, self.line), field=field, expected=expected)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: Any, at: Where, field: str, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise at.error(f"got a {_type_name(value)}", field=field, expected="a string")
    if not allow_empty and not value.strip():
        raise at.error("empty value", field=field, expected="a non-empty string")
    return value


def _json_field(record: Record, key: str, at: Where) -> Any:
    """A list-valued column; CSV cells (and some JSONL writers) hold it as JSON text."""
    value = record.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise at.error(f"not valid JSON ({error.msg})", field=key, expected="a JSON list") from None
    return value


def _list(value: Any, at: Where, field: str) -> list:
    if not isinstance(value, list):
        raise at.error(f"got a {_type_name(value)}", field=field, expected="a list")
    return value


def _tools(record: Record, at: Where) -> list[dict[str, Any]] | None:
    if record.get("tools") in (None, "", []):
        return None
    tools = _list(_json_field(record, "tools", at), at, "tools")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("function", tool).get("name"), str):
            raise at.error(
                "a tool schema without a name",
                field=f"tools[{index}]",
                expected='{"type": "function", "function": {"name", "description", "parameters"}}',
            )
    return tools


def _tool_call(call: Any, at: Where, field: str) -> dict[str, Any]:
    """One tool call in the normal form ``{"type": "function", "function": {"name", "arguments": dict}}``."""
    if not isinstance(call, dict):
        raise at.error(
            f"got a {_type_name(call)}", field=field, expected='{"function": {"name", "arguments"}}'
        )
    function = call.get("function", call)
    if not isinstance(function, dict):
        raise at.error("not an object", field=f"{field}.function", expected='{"name", "arguments"}')
    name = _string(function.get("name"), at, f"{field}.name", allow_empty=False)
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise at.error(
                f"arguments are not valid JSON ({error.msg})",
                field=f"{field}.arguments",
                expected="a JSON object",
            ) from None
    if not isinstance(arguments, dict):
        raise at.error(f"got a {_type_name(arguments)}", field=f"{field}.arguments", expected="an object")
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# --------------------------------------------------------------------------- the four formats


def _from_messages(record: Record, at: Where) -> tuple[list[Message], list[dict] | None]:
    items = _list(_json_field(record, "messages", at), at, "messages")
    messages = []
    for index, item in enumerate(items):
        field = f"messages[{index}]"
        if not isinstance(item, dict):
            raise at.error(f"got a {_type_name(item)}", field=field, expected='{"role", "content"}')
        raw_role = item.get("role")
        role = _MESSAGE_ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise at.error(
                f"unknown role {raw_role!r}",
                field=f"{field}.role",
                expected="one of: " + ", ".join(_MESSAGE_ROLES),
            )
        calls = None
        if role == "assistant" and item.get("tool_calls"):
            raw_calls = _list(item["tool_calls"], at, f"{field}.tool_calls")
            calls = [_tool_call(c, at, f"{field}.tool_calls[{i}]") for i, c in enumerate(raw_calls)]
        content = item.get("content")
        if content is None and calls:
            content = ""
        messages.append(Message(role, _string(content, at, f"{field}.content"), calls))
    return messages, _tools(record, at)


def _from_sharegpt(record: Record, at: Where) -> tuple[list[Message], list[dict] | None]:
    items = _list(_json_field(record, "conversations", at), at, "conversations")
    messages = []
    if record.get("system") not in (None, ""):
        messages.append(Message("system", _string(record["system"], at, "system")))
    for index, item in enumerate(items):
        field = f"conversations[{index}]"
        if not isinstance(item, dict):
            raise at.error(f"got a {_type_name(item)}", field=field, expected='{"from", "value"}')
        sender = item.get("from")
        role = _SHAREGPT_ROLES.get(sender) if isinstance(sender, str) else None
        if role is None:
            raise at.error(
                f"unknown role {sender!r}",
                field=f"{field}.from",
                expected="one of: " + ", ".join(_SHAREGPT_ROLES),
            )
        value = _string(item.get("value"), at, f"{field}.value")
        if sender == "function_call":
            try:
                call = json.loads(value)
            except json.JSONDecodeError as error:
                raise at.error(
                    f"not valid JSON ({error.msg})",
                    field=f"{field}.value",
                    expected='a function call as JSON: {"name": ..., "arguments": {...}}',
                ) from None
            messages.append(Message("assistant", "", [_tool_call(call, at, f"{field}.value")]))
        else:
            messages.append(Message(role, value))
    return messages, _tools(record, at)


def _from_alpaca(record: Record, at: Where) -> tuple[list[Message], list[dict] | None]:
    messages = []
    if record.get("system") not in (None, ""):
        messages.append(Message("system", _string(record["system"], at, "system")))
    history = _json_field(record, "history", at) if record.get("history") not in (None, "") else []
    for index, pair in enumerate(_list(history, at, "history")):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise at.error("not a [question, answer] pair", field=f"history[{index}]", expected="[q, a]")
        messages.append(Message("user", _string(pair[0], at, f"history[{index}][0]", allow_empty=False)))
        messages.append(Message("assistant", _string(pair[1], at, f"history[{index}][1]")))
    instruction = _string(record.get("instruction"), at, "instruction", allow_empty=False)
    extra = record.get("input")
    extra = "" if extra is None else _string(extra, at, "input")
    messages.append(Message("user", f"{instruction}\n{extra}" if extra.strip() else instruction))
    messages.append(Message("assistant", _string(record.get("output"), at, "output")))
    return messages, None


def _from_prompt_completion(record: Record, at: Where) -> tuple[list[Message], list[dict] | None]:
    messages = []
    if record.get("system") not in (None, ""):
        messages.append(Message("system", _string(record["system"], at, "system")))
    messages.append(Message("user", _string(record.get("prompt"), at, "prompt", allow_empty=False)))
    messages.append(Message("assistant", _string(record.get("completion"), at, "completion")))
    return messages, None


PARSERS = {
    "alpaca": _from_alpaca,
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "prompt_completion": _from_prompt_completion,
}
# The columns that identify each format (all must be present).
_SIGNATURES = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
FORMAT_HELP = (
    "one of: messages (a 'messages' column), sharegpt ('conversations'), alpaca ('instruction' + 'output'), "
    "prompt_completion ('prompt' + 'completion')"
)


def detect_format(records: list[Record], source: str) -> str:
    """The format whose identifying columns the records have; none or several is a UserError."""
    columns = columns_of(records)
    found = [name for name, needed in _SIGNATURES.items() if all(c in columns for c in needed)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(
            f"cannot tell the conversation format from the columns ({', '.join(columns) or 'none'})",
            file=source,
            expected=FORMAT_HELP,
        )
    raise UserError(
        f"the columns fit several formats ({', '.join(found)})",
        file=source,
        expected="format= set to one of them",
    )


def check(messages: list[Message], tools: list[dict] | None, at: Where, require_reply: bool = True) -> None:
    """What every template needs: messages, system only first, a reply last (unless ``require_reply`` is
    False: a prompt to reply to), declared tool calls."""
    if not messages:
        raise at.error("the conversation has no messages", expected="at least a user turn and a reply")
    for index, message in enumerate(messages):
        if message.role == "system" and index > 0:
            raise at.error(
                f"a system message at position {index}",
                field="messages",
                expected="the system message first (at most one)",
            )
        if message.role == "assistant" and not message.content.strip() and not message.tool_calls:
            raise at.error(
                f"message {index} is an empty assistant reply",
                field="messages",
                expected="reply text or tool calls",
            )
    last = messages[-1].role
    if require_reply and last != "assistant":
        raise at.error(
            f"the last message is the {last}'s",
            field="messages",
            expected="the assistant's reply last (a conversation must end with what the model should learn)",
        )
    if not require_reply and last not in ("user", "tool"):
        raise at.error(
            f"the last message is the {last}'s",
            field="messages",
            expected="a user or tool message last (the model replies to it)",
        )
    declared = set(tool_names(tools))
    for message in messages:
        for call in message.tool_calls or []:
            name = call["function"]["name"]
            if name not in declared:
                raise at.error(
                    f"a call to tool '{name}', which has no schema in 'tools'",
                    field="tools",
                    expected="a schema for every called tool"
                    + (f" (declared: {', '.join(sorted(declared))})" if declared else ""),
                )


__all__ = ["FORMAT_HELP", "FORMATS", "PARSERS", "Where", "check", "detect_format"]
