"""A built-in template (templates.yaml) written as a Jinja ``chat_template``, for exported tokenizers.

An exported model folder must chat without glmtune, so its ``tokenizer_config.json`` carries the template the run
was trained with. The Jinja below mirrors ``templates.text.BuiltinFormat.render`` piece for piece (the same strings
from templates.yaml, baked in as literals); tests/unit/infer/test_export.py checks both render every test conversation
(system, multi-turn, tools) to the same text through transformers' own ``apply_chat_template``.
"""

from __future__ import annotations

import json
import string

from glmtune.data.templates import Template


def _literal(text: str) -> str:
    """A Jinja string literal for ``text``: JSON escapes are exactly what Jinja's lexer unescapes (ASCII only)."""
    return json.dumps(text, ensure_ascii=True)


def _piece(text: str) -> str:
    """A templates.yaml piece as a Jinja expression; ``{bos}``/``{eos}`` become the tokenizer's tokens."""
    parts: list[str] = []
    for chunk in text.replace("{eos}", "\0eos\0").replace("{bos}", "\0bos\0").split("\0"):
        if chunk in ("bos", "eos"):
            parts.append(f"({chunk}_token or '')")
        elif chunk:
            parts.append(_literal(chunk))
    return " ~ ".join(parts) or "''"


def _formatted(fmt: str, **fields: str) -> str:
    """A ``str.format`` piece (``{tool}``, ``{name}``…, ``{{`` escapes) with its fields as Jinja expressions."""
    parts: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(fmt):
        if literal:
            parts.append(_literal(literal))
        if name is not None:
            parts.append(fields[name])
    return " ~ ".join(parts) or "''"


def to_jinja(t: Template) -> str:
    """The Jinja ``chat_template`` that renders like ``t`` (see the module docstring)."""
    content = "(message.content | trim)" if t.trim else "message.content"
    system_content = "(system | trim)" if t.trim else "system"
    default = "none" if t.default_system is None else _literal(t.default_system)
    bos = "{%- if bos_token %}{{- bos_token }}{%- endif %}" if t.bos != "none" else ""
    out = [
        bos,
        f"{{%- set system = {default} %}}{{%- set rest = messages %}}",
        "{%- if messages and messages[0].role == 'system' %}"
        "{%- set system = messages[0].content %}{%- set rest = messages[1:] %}{%- endif %}",
        "{%- set first_prefix = '' %}",
    ]
    if t.tools is None:
        refuse = f"{{{{- raise_exception('template {t.name} has no format for tools') }}}}"
        out.append(f"{{%- if tools %}}{refuse}{{%- endif %}}")
    else:
        tool = t.tools
        out.append(
            f"{{%- if tools %}}{{{{- {_piece(t.system.prefix)} ~ (system or '') ~ {_literal(tool.header)} }}}}"
            f"{{%- for tool in tools %}}{{{{- {_formatted(tool.item, tool='(tool | tojson)')} }}}}{{%- endfor %}}"
            f"{{{{- {_literal(tool.footer)} }}}}{{%- elif system is not none %}}"
        )
    if t.tools is None:
        out.append("{%- if system is not none %}")
    if t.system_in_first_user is not None:
        out.append(f"{{%- set first_prefix = system ~ {_literal(t.system_in_first_user)} %}}")
    else:
        out.append(f"{{{{- {_piece(t.system.prefix)} ~ {system_content} ~ {_piece(t.system.suffix)} }}}}")
    out.append("{%- endif %}")
    out.append("{%- for message in rest %}{%- set head = first_prefix if loop.first else '' %}")
    if t.tools is None:
        out.append(
            "{%- if message.role == 'tool' or message.tool_calls %}"
            f"{{{{- raise_exception('template {t.name} has no format for tool calls or results') }}}}"
        )
    else:
        tool = t.tools
        call = _formatted(
            tool.call, name="call.function.name", arguments="(call.function.arguments | tojson)"
        )
        out.append(
            "{%- if message.role == 'tool' %}"
            f"{{%- if loop.first or loop.previtem.role != 'tool' %}}{{{{- {_literal(tool.result_group_prefix)} }}}}"
            "{%- endif %}"
            f"{{{{- {_formatted(tool.result, content='message.content')} }}}}"
            f"{{%- if loop.last or loop.nextitem.role != 'tool' %}}{{{{- {_literal(tool.result_group_suffix)} }}}}"
            "{%- endif %}"
            "{%- elif message.role == 'assistant' and message.tool_calls %}"
            f"{{{{- {_literal(tool.call_turn_prefix)} }}}}"
            f"{{%- if message.content %}}{{{{- {_literal(tool.call_content_prefix)} ~ message.content }}}}{{%- endif %}}"
            f"{{%- for call in message.tool_calls %}}{{{{- {call} }}}}{{%- endfor %}}"
            f"{{{{- {_piece(t.assistant.suffix)} }}}}"
        )
    out.append(
        f"{{%- elif message.role == 'user' %}}{{{{- {_piece(t.user.prefix)} ~ head ~ {content} ~ "
        f"{_piece(t.user.suffix)} }}}}"
        f"{{%- else %}}{{{{- {_piece(t.assistant.prefix)} ~ head ~ {content} ~ {_piece(t.assistant.suffix)} }}}}"
        "{%- endif %}{%- endfor %}"
    )
    out.append(f"{{%- if add_generation_prompt %}}{{{{- {_piece(t.assistant.prefix)} }}}}{{%- endif %}}")
    return "".join(out)
