"""The conversation file layouts (see ``data.conversation``): one record → checked ``Message``s and tools.

Records are read through a ``format_detect.Layout``: the format and the file's own field names
(``data.columns``), so every error names the user's field. Every mistake is one ``UserError`` naming the file,
the line and the field path (``messages[2].content``).
"""

from __future__ import annotations

import json
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.columns import MESSAGE_ROLES, SHAREGPT_ROLES
from glmtune.data.format_detect import FORMATS, Layout
from glmtune.data.messages import Message, tool_names
from glmtune.data.read import Record, where

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


def _tool_list(tools: Any, at: Where, field: str) -> list[dict[str, Any]]:
    tools = _list(tools, at, field)
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("function", tool).get("name"), str):
            raise at.error(
                "a tool schema without a name",
                field=f"{field}[{index}]",
                expected='{"type": "function", "function": {"name", "description", "parameters"}}',
            )
    return tools


def _tools(record: Record, at: Where, column: str = "tools") -> list[dict[str, Any]] | None:
    if record.get(column) in (None, "", []):
        return None
    return _tool_list(_json_field(record, column, at), at, column)


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


# --------------------------------------------------------------------------- the formats


def _json_value(value: Any, at: Where, field: str) -> Any:
    """A value that CSV cells (and some writers) hold as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise at.error(f"not valid JSON ({error.msg})", field=field, expected="JSON") from None
    return value


def _system(record: Record, layout: Layout, at: Where) -> list[Message]:
    column = layout.keys.column("system")
    value = record.get(column)
    return [] if value in (None, "") else [Message("system", _string(value, at, column))]


def _learn(item: dict[str, Any], at: Where, field: str) -> bool:
    """The ChatGLM3 demo's ``"loss"`` key of a turn: ``false`` marks an assistant turn not to learn."""
    value = item.get("loss", True)
    if not isinstance(value, bool):
        raise at.error(f"got {value!r}", field=f"{field}.loss", expected="true or false")
    return value


def _demo_tool_turn(item: dict[str, Any], at: Where, field: str) -> list[Message]:
    """The ChatGLM3 finetune demo's ``{"role": "tool", "name", "parameters", "observation"}``: the assistant's
    call (not learned under ``"loss": false``), then its result (a non-string observation as JSON, as the demo
    writes it)."""
    call = {"name": item.get("name"), "arguments": item.get("parameters") or {}}
    observation = item.get("observation", "")
    if not isinstance(observation, str):
        observation = json.dumps(observation, ensure_ascii=False)
    learn = _learn(item, at, field)
    return [Message("assistant", "", [_tool_call(call, at, field)], learn), Message("tool", observation)]


def _function_call(value: str, at: Where, field: str) -> Message:
    """sharegpt's ``function_call`` turn: the call (or a list of calls) as JSON."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as error:
        raise at.error(
            f"not valid JSON ({error.msg})",
            field=field,
            expected='a function call as JSON: {"name": ..., "arguments": {...}}',
        ) from None
    calls = calls if isinstance(calls, list) else [calls]
    return Message("assistant", "", [_tool_call(call, at, f"{field}[{i}]") for i, call in enumerate(calls)])


def _from_turns(record: Record, at: Where, layout: Layout) -> tuple[list[Message], list[dict] | None]:
    """messages and sharegpt: a list of turns, each with a role and a content key (``layout``)."""
    assert layout.turns and layout.role and layout.content
    role_key, content_key = layout.role, layout.content
    items = _list(_json_field(record, layout.turns, at), at, layout.turns)
    roles = layout.keys.roles(SHAREGPT_ROLES if layout.format == "sharegpt" else MESSAGE_ROLES)
    messages: list[Message] = []
    system_tools = None
    for index, item in enumerate(items):
        field = f"{layout.turns}[{index}]"
        if not isinstance(item, dict):
            raise at.error(
                f"got a {_type_name(item)}", field=field, expected=f'{{"{role_key}", "{content_key}"}}'
            )
        raw = item.get(role_key)
        role = roles.get(raw) if isinstance(raw, str) else None
        if role is None:
            raise at.error(
                f"unknown role {raw!r}", field=f"{field}.{role_key}", expected="one of: " + ", ".join(roles)
            )
        if role == "tool" and content_key not in item and ("parameters" in item or "observation" in item):
            messages += _demo_tool_turn(item, at, field)
            continue
        if role == "system" and item.get("tools") not in (None, "", []):  # ChatGLM3: tools in the system turn
            system_tools = _tool_list(_json_value(item["tools"], at, f"{field}.tools"), at, f"{field}.tools")
        content = item.get(content_key)
        if role == "function_call":
            messages.append(
                _function_call(_string(content, at, f"{field}.{content_key}"), at, f"{field}.{content_key}")
            )
            continue
        calls = None
        if role == "assistant" and item.get("tool_calls"):
            raw_calls = _list(
                _json_value(item["tool_calls"], at, f"{field}.tool_calls"), at, f"{field}.tool_calls"
            )
            calls = [_tool_call(c, at, f"{field}.tool_calls[{i}]") for i, c in enumerate(raw_calls)]
        if content is None and calls:
            content = ""
        learn = _learn(item, at, field) if role == "assistant" else True
        messages.append(Message(role, _string(content, at, f"{field}.{content_key}"), calls, learn))
    if not (messages and messages[0].role == "system"):  # a system turn wins over a system column
        messages = _system(record, layout, at) + messages
    tools = _tools(record, at, layout.keys.column("tools"))
    if tools is not None and system_tools is not None and tools != system_tools:
        raise at.error(
            "different tools in the tools column and in the system turn",
            field=layout.keys.column("tools"),
            expected="the tools once (either place)",
        )
    return messages, tools if tools is not None else system_tools


def _from_alpaca(record: Record, at: Where, layout: Layout) -> tuple[list[Message], list[dict] | None]:
    keys = layout.keys
    messages = _system(record, layout, at)
    history_key = keys.column("history")
    history = _json_field(record, history_key, at) if record.get(history_key) not in (None, "") else []
    for index, pair in enumerate(_list(history, at, history_key)):
        field = f"{history_key}[{index}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise at.error("not a [question, answer] pair", field=field, expected="[q, a]")
        messages.append(Message("user", _string(pair[0], at, f"{field}[0]", allow_empty=False)))
        messages.append(Message("assistant", _string(pair[1], at, f"{field}[1]")))
    name = keys.column("instruction")
    instruction = _string(record.get(name), at, name, allow_empty=False)
    extra = record.get(keys.column("input"))
    extra = "" if extra is None else _string(extra, at, keys.column("input"))
    messages.append(Message("user", f"{instruction}\n{extra}" if extra.strip() else instruction))
    messages.append(
        Message("assistant", _string(record.get(keys.column("output")), at, keys.column("output")))
    )
    return messages, _tools(record, at, keys.column("tools"))


def _from_prompt_completion(
    record: Record, at: Where, layout: Layout
) -> tuple[list[Message], list[dict] | None]:
    prompt, completion = layout.keys.column("prompt"), layout.keys.column("completion")
    messages = _system(record, layout, at)
    messages.append(Message("user", _string(record.get(prompt), at, prompt, allow_empty=False)))
    messages.append(Message("assistant", _string(record.get(completion), at, completion)))
    return messages, None


PARSERS = {
    "alpaca": _from_alpaca,
    "messages": _from_turns,
    "sharegpt": _from_turns,
    "prompt_completion": _from_prompt_completion,
}


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
    replies = [m for m in messages if m.role == "assistant"]
    if require_reply and replies and not any(m.learn for m in replies):
        raise at.error(
            'every assistant turn has "loss": false, so there is nothing to learn',
            field="messages",
            expected='at least one assistant turn without "loss": false',
        )
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


__all__ = ["FORMATS", "PARSERS", "Where", "check"]
