"""Which templates exist: the built-in ones of ``templates.yaml`` (data, not code), and the names of the formats
that a model's tokenizer provides itself (``tokenizer.chat_format()``, see ``native``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

TEMPLATES_FILE = Path(__file__).resolve().parent / "templates.yaml"

# Formats that live with their model's tokenizer, by template name → the model family that has that tokenizer.
TOKENIZER_FORMATS = {"chatglm3": "ChatGLM3"}  # the one registration of a model's own chat format


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
    return sorted([*builtin_templates(), *TOKENIZER_FORMATS])


def tool_template_names() -> list[str]:
    """The named templates that can write tools, tool calls and tool results: the built-in ones with a ``tools``
    entry, then every tokenizer-provided format (each builds its own tool turns)."""
    return [name for name, t in builtin_templates().items() if t.tools is not None] + list(TOKENIZER_FORMATS)


__all__ = [
    "TEMPLATES_FILE",
    "TOKENIZER_FORMATS",
    "Template",
    "ToolFormat",
    "Turn",
    "builtin_templates",
    "template_names",
    "tool_template_names",
]
