"""The README stays true: every config key is documented, and the quick start is the Makefile's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from glmtune.core import config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys += all_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_config_key_is_in_the_reference():
    missing = [k for k in all_keys(config.Config) if f"`{k}`" not in README]
    assert not missing, f"README configuration reference lacks: {missing}"


def test_quick_start_is_two_make_commands():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    assert "make demo" in README and "make test" in README
    assert "\ndemo:" in makefile and "\ntest:" in makefile
