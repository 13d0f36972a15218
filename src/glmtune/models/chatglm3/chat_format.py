"""The ChatGLM3 chat and tool-call format: one place that turns a conversation into `input_ids` and `labels`.

The format is the official one (THUDM/ChatGLM3 `build_chat_input` and `finetune_demo`):

    [gMASK] sop  <|system|> "\\n" system text [+ "\\n" + tools as JSON, indent 4]
                 <|user|> "\\n" question
                 <|assistant|> "\\n" answer                       (a text reply)
                 <|assistant|> name "\\n" ```python\\ntool_call(k=v, ...)\\n```   (a tool call)
                 <|observation|> "\\n" tool result
                 ... </s>

Every turn is `build_single_message(role, metadata, content)`: the role token, then `metadata + "\\n"` and the
content, each SentencePiece-encoded on its own. Training labels follow the finetune demo: a token is learned
when the token *before* it belongs to an assistant turn, i.e. the assistant's text after its role token plus the
token that ends the turn (the next role token, or the final `</s>`). That is how the model learns to stop with
`</s>`, `<|user|>` or `<|observation|>`, the generation stop ids.
"""

import ast
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ChatTemplate:
    """The chat format as data (token names are resolved with the tokenizer)."""

    name: str
    prefix: tuple[str, ...]
    roles: tuple[str, ...]
    generation_prompt: str
    stop_tokens: tuple[str, ...]
    learned_roles: tuple[str, ...]
    tool_system_prompt: str
    tool_call_function: str
    tool_call_prefix: str
    tool_call_suffix: str


CHATGLM3 = ChatTemplate(
    name="chatglm3",
    prefix=("[gMASK]", "sop"),
    roles=("system", "user", "assistant", "observation"),
    generation_prompt="<|assistant|>",
    stop_tokens=("</s>", "<|user|>", "<|observation|>"),
    learned_roles=("assistant",),
    tool_system_prompt=(
        "Answer the following questions as best as you can. You have access to the following tools:"
    ),
    tool_call_function="tool_call",
    tool_call_prefix="```python\n",
    tool_call_suffix="\n```",
)


def token_id(tokenizer, name: str) -> int:
    """The id of a template token name ("</s>", "<|user|>", "[gMASK]", ...)."""
    return tokenizer.eos_token_id if name == "</s>" else tokenizer.get_command(name)


def stop_ids(tokenizer) -> list[int]:
    """Generation stops at any of these: `</s>` (2), `<|user|>` (64795), `<|observation|>` (64797)."""
    return [token_id(tokenizer, name) for name in CHATGLM3.stop_tokens]


def format_tool_call(parameters: Mapping[str, Any]) -> str:
    """The assistant content of a tool call: ```python\\ntool_call(k=v, ...)\\n``` (official `format_function_call`)."""
    keywords = [ast.keyword(arg=name, value=ast.Constant(value)) for name, value in parameters.items()]
    call = ast.Call(func=ast.Name(id=CHATGLM3.tool_call_function), args=[], keywords=keywords)
    return CHATGLM3.tool_call_prefix + ast.unparse(call) + CHATGLM3.tool_call_suffix


def tools_system_content(content: str, tools: Any) -> str:
    """System text followed by the tools as JSON (indent 4, non-ASCII kept), as `build_chat_input` does."""
    return content + "\n" + json.dumps(tools, indent=4, ensure_ascii=False)


def _arguments(call: Mapping[str, Any]) -> dict:
    """Tool-call parameters from our shape {"name", "parameters"} or OpenAI's {"function": {"arguments": json}}."""
    call = call.get("function", call)
    parameters = call.get("parameters", call.get("arguments", {}))
    return json.loads(parameters) if isinstance(parameters, str) else dict(parameters)


def _observation_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def turns(messages: Iterable[Mapping[str, Any]], tools: Any = None) -> Iterator[tuple[str, str, str, bool]]:
    """Normalises messages into `(role, metadata, content, learned)` turns of the ChatGLM3 format.

    Accepted messages: `{"role": "system"|"user"|"assistant"|"observation", "content", optional "metadata"}`;
    system may carry `"tools"`; assistant may carry `"tool_call": {"name", "parameters"}` (or an OpenAI-style
    `"tool_calls"` list) and `"loss": False` to not learn it; the finetune demo's `{"role": "tool", "name",
    "parameters", "observation"}` is a call plus its result; `{"role": "tool", "content"}` is a result.
    `tools` (if given and no system message has tools) adds the official tool system prompt first.
    """
    messages = list(messages)
    if tools is not None and not any(m["role"] == "system" and "tools" in m for m in messages):
        messages.insert(0, {"role": "system", "content": CHATGLM3.tool_system_prompt, "tools": tools})
    for message in messages:
        role, metadata = message["role"], message.get("metadata") or ""
        if role == "system":
            content = message.get("content", "")
            if "tools" in message:
                content = tools_system_content(content, message["tools"])
            yield "system", metadata, content, False
        elif role == "user":
            yield "user", metadata, message["content"], False
        elif role == "assistant":
            learned = bool(message.get("loss", True))
            calls = message.get("tool_calls") or ([message["tool_call"]] if message.get("tool_call") else [])
            if message.get("content") and calls:
                raise ValueError(
                    "an assistant message has either content or tool calls in ChatGLM3, not both"
                )
            for call in calls:
                name = call.get("function", call)["name"]
                yield "assistant", name, format_tool_call(_arguments(call)), learned
            if not calls:
                yield "assistant", metadata, message["content"], learned
        elif role == "tool" and "parameters" in message:
            yield (
                "assistant",
                message["name"],
                format_tool_call(message["parameters"]),
                bool(message.get("loss", True)),
            )
            yield "observation", "", _observation_text(message.get("observation", "")), False
        elif role in ("observation", "tool"):
            yield "observation", metadata, _observation_text(message["content"]), False
        else:
            raise ValueError(f"unknown role {role!r}: expected one of {CHATGLM3.roles} or 'tool'")


def encode_conversation(
    tokenizer, messages: Iterable[Mapping[str, Any]], tools: Any = None, max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """A training example: `input_ids` ending in `</s>` and `labels` (-100 where nothing is learned).

    A token is learned when the token before it is in a learned (assistant) turn, as in the official finetune
    demo (`loss_masks = [False, *loss_masks]`): the assistant's "\\n" and text, then the next role token or `</s>`.
    `max_len` truncates both on the right.
    """
    input_ids = [token_id(tokenizer, name) for name in CHATGLM3.prefix]
    learned = [False] * len(input_ids)
    for role, metadata, content, learn in turns(messages, tools):
        ids = tokenizer.build_single_message(role, metadata, content)
        input_ids += ids
        learned += [learn and role in CHATGLM3.learned_roles] * len(ids)
    input_ids.append(tokenizer.eos_token_id)
    learned.append(False)
    labels = [
        token if previous else IGNORE_INDEX for token, previous in zip(input_ids, [False] + learned[:-1])
    ]
    if max_len is not None:
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    return input_ids, labels


def encode_prompt(
    tokenizer, messages: Iterable[Mapping[str, Any]], tools: Any = None, add_generation_prompt: bool = True
) -> list[int]:
    """A generation prompt: the conversation so far, then `<|assistant|>` (same ids as `build_chat_input`)."""
    input_ids = [token_id(tokenizer, name) for name in CHATGLM3.prefix]
    for role, metadata, content, _ in turns(messages, tools):
        input_ids += tokenizer.build_single_message(role, metadata, content)
    if add_generation_prompt:
        input_ids.append(token_id(tokenizer, CHATGLM3.generation_prompt))
    return input_ids


def parse_tool_call(code: str) -> dict | None:
    """The keyword arguments of `tool_call(k=v, ...)` (optionally fenced in ```python), or None.

    Parsed with `ast` and `ast.literal_eval` only: nothing in the reply is executed (the official code `eval`s it).
    """
    code = code.strip()
    if code.startswith("```"):
        code = code.split("\n", 1)[1] if "\n" in code else ""
    if code.rstrip().endswith("```"):
        code = code.rstrip()[:-3]
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        return None
    call = tree.body
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == CHATGLM3.tool_call_function
        and not call.args
        and all(keyword.arg is not None for keyword in call.keywords)
    ):
        return None
    try:
        return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_reply(text: str) -> dict:
    """Splits a decoded reply (the text after the prompt's `<|assistant|>`) like the official `process_response`.

    Returns `{"content": text}` for a plain reply, `{"name", "parameters"}` for a tool call, or `{"name",
    "content"}` when the turn has metadata but no parsable `tool_call(...)` (e.g. code for an interpreter).
    When the reply holds several `<|assistant|>` turns, the last one is returned.
    """
    segment = text.split(CHATGLM3.generation_prompt)[-1]
    metadata, content = segment.split("\n", 1) if "\n" in segment else ("", segment)
    metadata = metadata.strip()
    if not metadata:
        return {"content": content.strip()}
    parameters = parse_tool_call(content)
    if parameters is not None:
        return {"name": metadata, "parameters": parameters}
    return {"name": metadata, "content": content}


class ChatGLM3Format:
    """The format bound to a tokenizer, as `ChatGLM3Tokenizer.chat_format()` returns it: what a template registry
    needs of a chat format that a tokenizer provides (glmtune's reads these members; nothing here imports it).

    Messages are OpenAI-style dicts (`role` system/user/assistant/tool, `content`, assistant `tool_calls`). Tools
    given with a system message are listed in that system turn; without one, the official tool system prompt
    comes first. A conversation the format cannot express raises ValueError.
    """

    name = CHATGLM3.name
    parses_tool_calls = True  # `parse_reply` reads a tool call back as {"name", "parameters"}

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @staticmethod
    def _inputs(messages: Iterable[Mapping[str, Any]], tools: Any) -> tuple[list[dict], Any]:
        messages = [dict(message) for message in messages]
        if tools and messages and messages[0]["role"] == "system":
            messages[0]["tools"] = tools  # the system text, then the tools as JSON
            tools = None  # (else `turns` would add the official tool system prompt as a second system turn)
        return messages, tools

    def encode_conversation(
        self, messages: Iterable[Mapping[str, Any]], tools: Any = None
    ) -> tuple[list[int], list[int]]:
        """`input_ids` and `labels` of a training example (see `encode_conversation`)."""
        return encode_conversation(self.tokenizer, *self._inputs(messages, tools))

    def encode_prompt(self, messages: Iterable[Mapping[str, Any]], tools: Any = None) -> list[int]:
        """A generation prompt ending in `<|assistant|>` (see `encode_prompt`)."""
        return encode_prompt(self.tokenizer, *self._inputs(messages, tools))

    def stop_ids(self) -> list[int]:
        return stop_ids(self.tokenizer)

    def parse_reply(self, text: str) -> dict:
        return parse_reply(text)

    def reply_text(self, text: str) -> str:
        """A reply's text as a reader sees it: every reply starts with its metadata line, empty for a plain
        reply, and that leading newline is not part of the answer."""
        return text.removeprefix("\n")


__all__ = [
    "CHATGLM3",
    "IGNORE_INDEX",
    "ChatGLM3Format",
    "ChatTemplate",
    "encode_conversation",
    "encode_prompt",
    "format_tool_call",
    "parse_reply",
    "parse_tool_call",
    "stop_ids",
    "turns",
]
