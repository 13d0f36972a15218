"""The run folder: its layout, atomic writes, and saving/loading what a run produced.

Layout (docs/DESIGN.md): config.yaml · adapter/ or body.safetensors · head.safetensors + labels.json (classification
only) · metrics.json · predictions.jsonl · log.jsonl · tb/ · loss.png · confusion.png · checkpoints/.
Everything is written to a temporary name in the same folder and renamed, so a killed process never leaves
a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError

RUN_FORMAT = 1  # bump when the layout changes incompatibly; older folders are refused with a clear error
_UMASK = os.umask(0)
os.umask(_UMASK)
MARKER = "glmtune.json"  # written first: marks a folder as a glmtune run and records its format


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should follow the user's umask
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as strict JSON: a non-finite number (nan, inf) becomes null, and a mapping at the top lists where
    under ``"non_finite"`` (e.g. ``["validation.loss"]``), so every reader can parse the file."""
    found: list[str] = []
    obj = _finite_or_null(obj, "", found)
    if found and isinstance(obj, dict):
        obj["non_finite"] = list(dict.fromkeys([*(obj.get("non_finite") or []), *found]))
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _finite_or_null(value: Any, where: str, found: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found.append(where)
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder; it replaces ``path`` (a folder) only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; outputs should follow the user's umask
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


class RunDir:
    """A run folder. Paths are properties so every module names files the same way."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- the layout
    config = property(lambda self: self.path / "config.yaml")
    marker = property(lambda self: self.path / MARKER)
    metrics = property(lambda self: self.path / "metrics.json")
    predictions = property(lambda self: self.path / "predictions.jsonl")
    # classification: the validation split's too (ensembles fit weights on it without reloading the model)
    validation_predictions = property(lambda self: self.path / "validation_predictions.jsonl")
    log = property(lambda self: self.path / "log.jsonl")
    tensorboard = property(lambda self: self.path / "tb")
    loss_plot = property(lambda self: self.path / "loss.png")
    metrics_plot = property(lambda self: self.path / "metrics.png")
    confusion_plot = property(lambda self: self.path / "confusion.png")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")  # peft adapter (LoRA)
    body = property(lambda self: self.path / "body.safetensors")  # trained body tensors (full/freeze)
    head = property(lambda self: self.path / "head.safetensors")
    labels = property(lambda self: self.path / "labels.json")
    prompt = property(lambda self: self.path / "prompt.json")  # a prompt run's template, words, demos

    # ---- lifecycle
    def create(self, *, overwrite: bool = False) -> None:
        """Make a fresh run folder. A non-empty folder is never reused silently (nothing a user made is lost)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError("exists and is not a folder", file=str(self.path))
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise UserError(
                    "run folder exists and is not empty",
                    file=str(self.path),
                    expected="--overwrite to replace it, --resume to continue it, or --output NEW_DIR",
                )
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_marker(self, extra: dict[str, Any] | None = None) -> None:
        from glmtune import __version__

        atomic_write_json(self.marker, {"format": RUN_FORMAT, "glmtune": __version__, **(extra or {})})

    def check(self, *, need_weights: bool = True) -> dict[str, Any]:
        """Validate an existing run folder before loading it; one clear error when it cannot be used."""
        if not self.path.is_dir():
            raise UserError("run folder not found", file=str(self.path))
        if not self.marker.is_file():
            raise UserError("not a glmtune run folder (no glmtune.json)", file=str(self.path))
        info = read_json(self.marker)
        if info.get("format") != RUN_FORMAT:
            raise UserError(
                f"run folder format {info.get('format')} (glmtune {info.get('glmtune')})",
                file=str(self.path),
                expected=f"format {RUN_FORMAT}; re-train with this glmtune version",
            )
        trained = self.head.is_file() or self.body.is_file() or self.adapter.is_dir()
        if need_weights and not trained:
            raise UserError("run folder holds no trained weights (did training finish?)", file=str(self.path))
        return info


def prune(paths: list[Path], keep: int, remove: Callable[[Path], None] = shutil.rmtree) -> None:
    """Remove all but the newest ``keep`` of ``paths`` (sorted oldest first)."""
    for path in paths[: max(0, len(paths) - keep)]:
        remove(path)
