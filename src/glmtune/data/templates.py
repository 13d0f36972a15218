"""Conversation → ``input_ids`` and ``labels``: chat templates, label masks and truncation, in one place.

A template is either the tokenizer's own Jinja ``chat_template`` (``"auto"``), one of the built-in formats in
``templates.yaml`` (``chatml``, ``gemma``, ``llama3``, ``plain``: data, not code), or ``chatglm3``, which
delegates to ``models/chatglm3/chat_format`` (ChatGLM3 tokenizes turn by turn, not a rendered string).

Labels are derived incrementally, so every span is exact whatever the template: for the ``i``-th message,
if it is the assistant's, the conversation up to it is rendered with the generation prompt and tokenized, and
so is the conversation up to and including it; where those token ids stop agreeing with the ids of the whole
conversation are the turn's first and last tokens. Inside that span the turn is learned up to and including
its end-of-turn token (``<|im_end|>``, ``<eos>``, ...), so the model learns to stop; what follows it (a
newline before the next turn) is not. Every assistant turn is learned; with ``train_on_prompt`` every token is.
Labels use the transformers convention: ``labels[t] = input_ids[t]`` where learned, ``-100`` elsewhere (the
model shifts them).

Truncation never cuts through a turn: early rounds (a user turn and everything up to the next user turn) are
dropped whole, oldest first, keeping the system message and tools, until the rest fits ``max_seq_len``. When
not even the last round fits, the example is dropped (``EncodedConversation.dropped``) and counted, never
mangled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation, Message
from glmtune.models.causal import IGNORE_INDEX  # noqa: E402 (one definition, re-exported for data users)

TEMPLATES_FILE = Path(__file__).resolve().parent / "templates.yaml"
DELEGATED = ("chatglm3",)  # formats that live with their model package
_BOUNDARY_SLACK = (
    2  # tokens a BPE merge across a turn boundary may change; more means the template re-renders
)


# =========================================================================== templates as data


@dataclass(frozen=True)
class Turn:
    prefix: str
    suffix: str


@dataclass(frozen=True)
class ToolFormat:
    header: str
    item: str
    footer: str
    call_turn_prefix: str
    call_content_prefix: str
    call: str
    result_group_prefix: str
    result: str
    result_group_suffix: str


@dataclass(frozen=True)
class Template:
    """One entry of templates.yaml (see the field notes at the top of that file)."""

    name: str
    source: str
    bos: str  # "required" | "optional" | "none"
    special_tokens: tuple[str, ...]
    end_of_turn: str
    trim: bool
    system_in_first_user: str | None
    default_system: str | None
    system: Turn
    user: Turn
    assistant: Turn
    tools: ToolFormat | None = None


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, Template]:
    """The templates of templates.yaml, by name (read once)."""
    raw = yaml.safe_load(TEMPLATES_FILE.read_text(encoding="utf-8"))
    templates = {}
    for name, entry in raw.items():
        entry = dict(entry)
        for role in ("system", "user", "assistant"):
            entry[role] = Turn(**entry[role])
        entry["special_tokens"] = tuple(entry["special_tokens"])
        if entry.get("tools") is not None:
            entry["tools"] = ToolFormat(**entry["tools"])
        templates[name] = Template(name=name, **entry)
    return templates


def template_names() -> list[str]:
    """Every name ``template=`` accepts, besides ``auto``."""
    return sorted([*builtin_templates(), *DELEGATED])


# =========================================================================== results


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
    """The encodable examples of a dataset, and how many were cut (``num_truncated``) or left out (``num_dropped``)."""

    examples: list[EncodedConversation]
    num_truncated: int
    num_dropped: int


# =========================================================================== formats


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    """Exactly how ``apply_chat_template(tokenize=True)`` tokenizes a rendered conversation."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when the tokenizer reads it as one (special) token, else None."""
    ids = _tokenize(tokenizer, token)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    return ids[0]


def _special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special tokens and the added tokens marked special (turn markers live there)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(index for index, added in decoder.items() if getattr(added, "special", False))
    return ids


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class _TextFormat:
    """A template that renders a conversation to one string (built-in data or the tokenizer's Jinja)."""

    name: str
    end_ids: set[int]  # tokens that end an assistant turn (learned; generation stops on them)

    def render(self, messages: Sequence[Message], tools: list | None, add_generation_prompt: bool) -> str:
        raise NotImplementedError

    def stop_ids(self) -> list[int]:
        raise NotImplementedError

    def parse_reply(self, text: str) -> dict[str, Any]:
        """A generated reply as a message: ``{"content": text}`` (tool calls are not parsed from text formats)."""
        return {"content": text}

    def encode(
        self, tokenizer: Any, messages: Sequence[Message], tools: list | None, train_on_prompt: bool
    ) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation and labels derived turn by turn (see the module docstring)."""
        ids = _tokenize(tokenizer, self.render(messages, tools, False))
        if train_on_prompt:
            return ids, list(ids)
        learned = [False] * len(ids)
        previous_end = 0
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            if index == 0:
                start = 0
            else:
                prompt = _tokenize(tokenizer, self.render(messages[:index], tools, True))
                start = self._agreeing(prompt, ids, "the conversation before an assistant turn")
            upto = _tokenize(tokenizer, self.render(messages[: index + 1], tools, False))
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
        agree = _common_prefix(part, whole)
        if agree < len(part) - _BOUNDARY_SLACK:
            raise self._unstable(what)
        return agree

    def _unstable(self, what: str) -> UserError:
        return UserError(
            f"template '{self.name}' renders {what} differently once later turns follow (it rewrites the "
            "history, e.g. drops reasoning), so the learned tokens cannot be located exactly",
            field="template",
            expected="a built-in template: " + ", ".join(template_names()),
        )


class _BuiltinFormat(_TextFormat):
    """A templates.yaml entry bound to a tokenizer (its BOS/EOS text, checked special tokens)."""

    def __init__(self, template: Template, tokenizer: Any):
        self.name, self.template = template.name, template
        missing = [token for token in template.special_tokens if _single_token_id(tokenizer, token) is None]
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
        end_id = _single_token_id(tokenizer, end)
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
                expected="chatml, chatglm3, or 'auto' with a tokenizer whose chat template supports tools",
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


def _hf_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages as transformers' chat templates expect them (OpenAI style, arguments as objects)."""
    rendered = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = message.tool_calls
        rendered.append(item)
    return rendered


class _JinjaFormat(_TextFormat):
    """The tokenizer's own ``chat_template``, rendered by ``apply_chat_template``."""

    name = "auto"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.end_ids = _special_ids(tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        self._stop = self._probe_end_of_turn() + [eos]
        self._stop = [i for n, i in enumerate(self._stop) if i is not None and i not in self._stop[:n]]

    def render(self, messages: Sequence[Message], tools: list | None, add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                _hf_messages(messages),
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

    def _probe_end_of_turn(self) -> list[int]:
        """The special token that closes an assistant turn in this template (found on a probe conversation)."""
        probe = [Message("user", "Hi"), Message("assistant", "Hello")]
        try:
            ids = _tokenize(self.tokenizer, self.render(probe, None, False))
            prompt = _tokenize(self.tokenizer, self.render(probe[:1], None, True))
        except UserError:
            return []
        closing = [token for token in ids[_common_prefix(prompt, ids) :] if token in self.end_ids]
        return closing[:1]

    def stop_ids(self) -> list[int]:
        return list(self._stop)


class _ChatGLM3Format:
    """ChatGLM3's own chat/tool format (models/chatglm3/chat_format): turn-by-turn ids, official labels."""

    name = "chatglm3"

    def __init__(self, tokenizer: Any):
        if not hasattr(tokenizer, "build_single_message"):
            raise UserError(
                "template 'chatglm3' needs ChatGLM3's own tokenizer",
                field="template",
                expected="a ChatGLM3 model, or another template for this tokenizer",
            )
        from glmtune.models.chatglm3 import chat_format

        self.tokenizer, self.chat_format = tokenizer, chat_format

    def _dicts(self, messages: Sequence[Message], tools: list | None) -> tuple[list[dict], list | None]:
        dicts = _hf_messages(messages)
        if tools and dicts and dicts[0]["role"] == "system":
            dicts[0]["tools"] = tools  # the system text, then the tools as JSON
            tools = None  # (else chat_format would add its own tool system prompt as a second system turn)
        return dicts, tools

    def _call(self, function: Callable, messages: Sequence[Message], tools: list | None, **kwargs: Any):
        dicts, tools = self._dicts(messages, tools)
        try:
            return function(self.tokenizer, dicts, tools=tools, **kwargs)
        except ValueError as error:
            raise UserError(
                str(error), field="template", expected="a conversation ChatGLM3 can express"
            ) from None

    def encode(
        self, tokenizer: Any, messages: Sequence[Message], tools: list | None, train_on_prompt: bool
    ) -> tuple[list[int], list[int]]:
        ids, labels = self._call(self.chat_format.encode_conversation, messages, tools)
        return (ids, list(ids)) if train_on_prompt else (ids, labels)

    def prompt(self, messages: Sequence[Message], tools: list | None) -> list[int]:
        return self._call(self.chat_format.encode_prompt, messages, tools)

    def stop_ids(self) -> list[int]:
        return self.chat_format.stop_ids(self.tokenizer)

    def parse_reply(self, text: str) -> dict[str, Any]:
        """``{"content"}``, or a tool call ``{"name", "parameters"}`` (ChatGLM3's ``parse_reply``)."""
        return self.chat_format.parse_reply(text)


def resolve_template(tokenizer: Any, template: str = "auto") -> _TextFormat | _ChatGLM3Format:
    """The format ``template`` names, bound to ``tokenizer``; a template the tokenizer lacks is a UserError.

    ``auto``: the tokenizer's Jinja ``chat_template`` if it has one; ChatGLM3's tokenizer (which has its own
    format instead) gets ``chatglm3``; any other tokenizer without a chat template is an error.
    """
    if template == "auto":
        if getattr(tokenizer, "chat_template", None):
            return _JinjaFormat(tokenizer)
        if hasattr(tokenizer, "build_single_message") and hasattr(tokenizer, "get_command"):
            return _ChatGLM3Format(tokenizer)
        raise UserError(
            "the tokenizer has no chat template, so 'auto' has nothing to use",
            field="template",
            expected="one of the built-in templates: " + ", ".join(template_names()),
        )
    if template in DELEGATED:
        return _ChatGLM3Format(tokenizer)
    templates = builtin_templates()
    if template not in templates:
        raise UserError(
            f"unknown template '{template}'",
            field="template",
            expected="auto or one of: " + ", ".join(template_names()),
        )
    return _BuiltinFormat(templates[template], tokenizer)


# =========================================================================== encoding


def _rounds(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(the system message if any, rounds): each round starts at a user turn and runs to the next one."""
    system = [messages[0]] if messages and messages[0].role == "system" else []
    rounds: list[list[Message]] = []
    for message in messages[len(system) :]:
        if message.role == "user" or not rounds:
            rounds.append([])
        rounds[-1].append(message)
    return system, rounds


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
    fmt = resolve_template(tokenizer, template) if isinstance(template, str) else template
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


def encode_conversations(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    template: str = "auto",
    *,
    max_seq_len: int,
    train_on_prompt: bool = False,
) -> EncodedConversations:
    """Every conversation that fits (in order), with counts of the truncated and the dropped ones."""
    fmt = resolve_template(tokenizer, template)
    examples, truncated, dropped = [], 0, 0
    for conv in conversations:
        encoded = encode_conversation(
            tokenizer, conv, fmt, max_seq_len=max_seq_len, train_on_prompt=train_on_prompt
        )
        if encoded.dropped:
            dropped += 1
            continue
        truncated += encoded.truncated
        examples.append(encoded)
    return EncodedConversations(examples, truncated, dropped)


def encode_prompt(
    tokenizer: Any,
    messages: Conversation | Sequence[Message],
    template: str = "auto",
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """A generation prompt: the conversation so far, ending with the assistant's header (the model replies).

    ``tools`` defaults to the conversation's own when ``messages`` is a Conversation.
    """
    if isinstance(messages, Conversation):
        tools = messages.tools if tools is None else tools
        messages = messages.messages
    fmt = resolve_template(tokenizer, template)
    if isinstance(fmt, _ChatGLM3Format):
        return fmt.prompt(list(messages), tools)
    return _tokenize(tokenizer, fmt.render(list(messages), tools, True))


def stop_ids(tokenizer: Any, template: str = "auto") -> list[int]:
    """The token ids that end a reply: the template's end-of-turn token, then EOS (no duplicates)."""
    return resolve_template(tokenizer, template).stop_ids()


# =========================================================================== inspection

_LEARNED, _PROMPT, _RESET = "\x1b[1;32m", "\x1b[2m", "\x1b[0m"


def render_mask(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], color: bool = True) -> str:
    """The decoded example with learned tokens highlighted (bold green; prompt dim), for ``glmtune data inspect``.

    Without colour, learned spans are wrapped in « ». Special tokens are shown; runs of tokens are decoded
    together so multi-byte characters split over tokens stay readable.
    """
    if len(input_ids) != len(labels):
        raise ValueError(f"{len(input_ids)} ids but {len(labels)} labels")
    pieces, start = [], 0
    for end in range(1, len(input_ids) + 1):
        if end < len(input_ids) and (labels[end] != IGNORE_INDEX) == (labels[start] != IGNORE_INDEX):
            continue
        text = tokenizer.decode(list(input_ids[start:end]), skip_special_tokens=False)
        learned = labels[start] != IGNORE_INDEX
        if color:
            pieces.append(f"{_LEARNED if learned else _PROMPT}{text}{_RESET}")
        else:
            pieces.append(f"«{text}»" if learned else text)
        start = end
    return "".join(pieces)


__all__ = [
    "IGNORE_INDEX",
    "EncodedConversation",
    "EncodedConversations",
    "Template",
    "builtin_templates",
    "encode_conversation",
    "encode_conversations",
    "encode_prompt",
    "render_mask",
    "resolve_template",
    "stop_ids",
    "template_names",
]
