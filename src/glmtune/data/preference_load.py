"""Preference data's splits: files or a built-in preference dataset → seeded train / validation / test.

``data.train_file`` (or ``data.dataset``, a built-in preference dataset) is read by ``data.preference``; validation
and test come from ``data.validation_file`` / ``data.test_file`` or are carved from the training records (seeded
by ``data.seed``), as SFT does. ``data.max_train_samples`` / ``max_eval_samples`` cap the training and validation
examples (a seeded sample, file order kept). ``data.redact`` replaces personal data in every message of every split
(and of a file read for ``glmtune eval --data``), counted per split in the summary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.classification import split_count
from glmtune.data.preference import PreferenceExample, examples_from_records
from glmtune.data.read import read_records
from glmtune.data.redact import Redactor, redact_items, redact_splits
from glmtune.data.summary import SplitCounts, new_counts


@dataclass
class PreferenceData:
    """The three splits of a preference run."""

    train: list[PreferenceExample]
    validation: list[PreferenceExample]
    test: list[PreferenceExample]
    counts: dict[str, SplitCounts] = field(default_factory=dict)  # only ``redacted`` is kept here

    def summary(self) -> dict[str, dict[str, Any]]:
        """data_summary.json: per split its examples (``total``) and, under ``data.redact``, ``redacted``."""
        summary: dict[str, dict[str, Any]] = {}
        for name in ("train", "validation", "test"):
            summary[name] = {"total": len(getattr(self, name))}
            redacted = self.counts[name].redacted if name in self.counts else None
            if redacted is not None:
                summary[name]["redacted"] = redacted
        return summary


def read_examples(path: str, cfg: DataConfig) -> list[PreferenceExample]:
    """Every example of a file (any preference format), redacted as training's were (``data.redact``); an empty
    file is an error."""
    return redact_items(_read(path, cfg), cfg.redact, Redactor.preference)[0]


def _read(path: str, cfg: DataConfig) -> list[PreferenceExample]:
    examples = examples_from_records(read_records(path, encoding=cfg.encoding, sheet=cfg.sheet), path)
    if not examples:
        raise UserError("no examples in the file", file=path, expected="at least one record")
    return examples


def _builtin(name: str) -> list[PreferenceExample]:
    from glmtune.data.builtin import dataset_for

    return examples_from_records(dataset_for(name, "preference").loader(), name)


def _sample(examples: list[PreferenceExample], limit: int | None, seed: int) -> list[PreferenceExample]:
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def load_preference(cfg: DataConfig) -> PreferenceData:
    """Read, check and split the data of a preference run (see the module docstring)."""
    if cfg.train_file is not None:
        pool = _read(cfg.train_file, cfg)
    elif cfg.dataset is not None:
        pool = _builtin(cfg.dataset)
    else:
        raise UserError("no data", field="data.train_file", expected="a preference file or data.dataset")
    validation = _read(cfg.validation_file, cfg) if cfg.validation_file else None
    test = _read(cfg.test_file, cfg) if cfg.test_file else None
    n_test = split_count(cfg.test_size, len(pool), "data.test_size") if test is None else 0
    n_validation = (
        split_count(cfg.validation_size, len(pool), "data.validation_size") if validation is None else 0
    )
    if len(pool) - n_test - n_validation < 1:
        raise UserError(
            f"{len(pool)} examples leave none for training after {n_validation} validation and {n_test} test",
            field="data.validation_size",
            expected="smaller data.validation_size / data.test_size, or more data",
        )
    order = list(range(len(pool)))
    random.Random(cfg.seed).shuffle(order)
    held = set(order[: n_test + n_validation])
    carved_test = [pool[i] for i in sorted(order[:n_test])]
    carved_validation = [pool[i] for i in sorted(order[n_test : n_test + n_validation])]
    train = _sample([e for i, e in enumerate(pool) if i not in held], cfg.max_train_samples, cfg.seed)
    validation = _sample(
        validation if validation is not None else carved_validation, cfg.max_eval_samples, cfg.seed
    )
    test = test if test is not None else carved_test
    counts = new_counts({})
    train, validation, test = redact_splits(
        {"train": train, "validation": validation, "test": test}, cfg.redact, Redactor.preference, counts
    )
    return PreferenceData(train, validation, test, counts)


__all__ = ["PreferenceData", "load_preference", "read_examples"]
