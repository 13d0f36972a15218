"""The README stays true: the quick start is the Makefile's. (Every config key is documented in docs/config.md,
checked by tests/unit/core/test_config_reference.py.)"""

from __future__ import annotations

from tests.helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_quick_start_is_two_make_commands():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "make demo" in README and "make test" in README
    assert "\ndemo:" in makefile and "\ntest:" in makefile
