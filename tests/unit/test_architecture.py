"""The house keeps its shape: the import contract holds, the package root stays small, modules stay short, and
the recipe stays a table of contents. These fail the day someone adds a circle or a 600-line module."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = Path(importlib.util.find_spec("glmtune").origin).parent
MAX_MODULE_LINES = 400
MAX_ROOT_ENTRIES = 9  # __init__.py, cli, and the seven layers' packages


def test_the_import_contract_holds():
    """pyproject.toml's [tool.importlinter] contracts: layers, ChatGLM3's independence, no sibling circles."""
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and " kept" in done.stdout


def test_the_package_root_is_small():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= MAX_ROOT_ENTRIES, entries


def test_no_module_is_over_400_lines():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules: {long}"


def test_the_recipe_reads_as_a_table_of_contents():
    """train.run fits on one screen: it calls named steps (prepare, fit, finish) and holds no loop itself."""
    source = (PACKAGE / "train" / "recipe.py").read_text(encoding="utf-8")
    run = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "run")
    assert run.end_lineno - run.lineno + 1 < 60
    assert not any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(run))
    called = {n.func.id for n in ast.walk(run) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"prepare", "fit", "finish"} <= called


def test_private_parts_of_other_libraries_are_touched_only_in_compat():
    """accelerate's _reset_state, torch's private quantized constructors, peft's lora_variant dict and the hub's
    offline constant are reached through glmtune.core._compat alone."""
    private = (
        "_reset_state",
        "_make_per_channel_quantized_tensor",
        "._weight_bias(",
        ".lora_variant[",
        "HF_HUB_OFFLINE =",
    )
    offenders = [
        f"{path.relative_to(PACKAGE)}: {needle}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "_compat.py"
        for needle in private
        if needle in path.read_text(encoding="utf-8")
    ]
    assert not offenders, offenders
