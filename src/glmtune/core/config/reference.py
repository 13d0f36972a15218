"""The configuration reference, ``docs/config.md``, generated from the config dataclasses so it cannot drift.

A field's description is the string literal right after it in its class body (litgpt's style), read with ``ast``
from the class's source; its type and default come from ``dataclasses.fields`` (defaults as an empty config gets
them: ``Config()``); its allowed values come from the ``_choice(self.<field>, ...)`` call that checks it. Nested
sections become dotted sections (``data.augment``), a list of small sections one entry's keys (``data.train_files[]``).

    python -m glmtune.core.config.reference           # print the reference
    python -m glmtune.core.config.reference --write   # write docs/config.md (atomically)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import os
import re
import sys
import tempfile
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from glmtune.core.config.sections import Config

COMMAND = "python -m glmtune.core.config.reference --write"
DEFAULT_PATH = Path(__file__).resolve().parents[4] / "docs" / "config.md"
_PLAIN = re.compile(r"[\w.@:/+-]+")


@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    description: str


@dataclasses.dataclass
class Section:
    name: str  # dotted; "" for the top level
    intro: str
    rows: list[Row]

    @property
    def title(self) -> str:
        return self.name or "Top level"


def _class_node(cls: type) -> ast.ClassDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    node = tree.body[0]
    assert isinstance(node, ast.ClassDef) and node.name == cls.__name__, cls
    return node


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each annotated field of ``cls`` → the string literal on the statement right after it ("" when none)."""
    body = _class_node(cls).body
    docs = {}
    for stmt, after in zip(body, [*body[1:], None]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            literal = (
                after.value.value
                if isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                else ""
            )
            docs[stmt.target.id] = inspect.cleandoc(literal)
    return docs


@functools.cache
def field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Each field checked by ``_choice(self.<field>, ALLOWED, ...)`` in ``__post_init__`` → ALLOWED."""
    post_init = next(
        (n for n in _class_node(cls).body if isinstance(n, ast.FunctionDef) and n.name == "__post_init__"),
        None,
    )
    if post_init is None:
        return {}
    namespace = vars(sys.modules[cls.__module__])
    choices = {}
    for call in ast.walk(post_init):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_choice"):
            continue
        target, allowed = call.args[0], call.args[1]
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)):
            continue
        if target.value.id != "self":
            continue
        if isinstance(allowed, ast.Name):
            value = namespace.get(allowed.id)
        else:
            try:
                value = ast.literal_eval(allowed)
            except ValueError:
                value = None
        if isinstance(value, tuple):
            choices[target.attr] = value
    return choices


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = sorted(typing.get_args(tp), key=lambda a: a is type(None))  # null last
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _value(value: Any) -> str:
    """A default as YAML would spell it, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_value(k)}: {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _list_item(tp: Any) -> type | None:
    """The dataclass of ``list[X]`` / ``list[X] | None`` when X is one, else None."""
    candidates = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for option in candidates:
        if typing.get_origin(option) is list:
            (item,) = typing.get_args(option)
            if dataclasses.is_dataclass(item):
                return item
    return None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _prose(text: str) -> str:
    """A docstring as one Markdown line: RST ``code`` → `code`, whitespace collapsed."""
    return " ".join(text.replace("``", "`").split())


def anchor(title: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _link(name: str) -> str:
    return f"[`{name}`](#{anchor(name)})"


def sections(cls: type = Config) -> list[Section]:
    """The reference's sections, depth first: each section, then the sections nested in it, in field order."""
    out: list[Section] = []

    def walk(cls: type, name: str, instance: Any, intro: str) -> None:
        hints = typing.get_type_hints(cls)
        docs, choices = field_docs(cls), field_choices(cls)
        prefix = f"{name}." if name else ""
        rows, nested = [], []
        section = Section(name, intro, rows)
        out.append(section)
        for f in dataclasses.fields(cls):
            key, tp, doc = prefix + f.name, hints[f.name], _prose(docs.get(f.name, ""))
            value = getattr(instance, f.name) if instance is not None else _field_default(f)
            if dataclasses.is_dataclass(tp):
                rows.append(Row(key, "section", "", f"{doc} See {_link(key)}."))
                nested.append((tp, key, value, _prose(inspect.getdoc(tp) or "")))
                continue
            type_name = _type_name(tp)
            if f.name in choices:
                type_name = "one of " + ", ".join(f"`{c}`" for c in choices[f.name])
                if type(None) in typing.get_args(tp):
                    type_name += ", or `null`"
            else:
                type_name = f"`{type_name}`"
            item = _list_item(tp)
            if item is not None:
                doc += f" Each entry: {_link(key + '[]')}."
                entry = f"A list: each entry of `{key}` has these keys. {_prose(inspect.getdoc(item) or '')}"
                nested.append((item, key + "[]", None, entry))
            rows.append(Row(key, type_name, f"`{_value(value)}`", doc))
        for args in nested:
            walk(*args)

    walk(cls, "", cls(), _prose(inspect.getdoc(cls) or ""))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def render() -> str:
    """``docs/config.md``: the whole reference, deterministic."""
    parts = sections()
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from src/glmtune/core/config/ by `{COMMAND}`; do not edit by hand. -->",
        "",
        "This file is generated from the field docstrings of the config dataclasses in `src/glmtune/core/config/`:",
        f"edit a docstring there, then regenerate it with `{COMMAND}` (a test fails while it is stale).",
        "",
        "Every key can be set in the YAML config (each section a nested mapping) or on the command line as a dotted",
        "override (`glmtune train cfg.yaml train.lr=1e-4`). Unknown keys are errors that name the nearest valid key;",
        "every value is checked against its type and allowed values before anything runs, and the resolved config is",
        "saved as `config.yaml` in every run folder. A default is what a config that leaves the key out gets; `null`",
        "means unset.",
        "",
        "Sections: " + ", ".join(f"[{s.title}](#{anchor(s.title)})" for s in parts) + ".",
    ]
    for section in parts:
        lines += ["", f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for row in section.rows:
            cells = (f"`{row.key}`", row.type, row.default, row.description)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write(path: Path = DEFAULT_PATH) -> bool:
    """Write the reference to ``path`` atomically (a temporary file, then a rename); False when already current."""
    text = render()
    path = Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644  # mkstemp's own is 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glmtune.core.config.reference",
        description="Print the configuration reference generated from the config dataclasses, or --write it.",
    )
    parser.add_argument("--write", action="store_true", help="write it to --out instead of printing it")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help=f"default: {DEFAULT_PATH}")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(render())
        return 0
    changed = write(args.out)
    print(f"{'wrote' if changed else 'up to date:'} {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
