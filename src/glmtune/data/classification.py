"""Classification data: read a built-in dataset or files, settle the label set, split, cap.

``load_classification(cfg.data)`` is the one place that decides which examples a run trains, validates and
tests on. Splits depend on ``data.seed`` only (never ``train.seed``), so runs with different training seeds
are compared on the same test set. Without a test/validation file, the test set is carved from the training
data first, then the validation set from the rest; sizes are fractions of (or counts from) all training
rows. Carved splits are stratified by label where every class is large enough (else unstratified, with a
warning) and keep file order within each split, so prediction files read like the source. The text and label
columns are ``data.columns.text``/``label`` (or ``data.text_column``/``label_column``); ``data.dataset`` may name
a dataset of ``data.dataset_info``. Texts shared between splits are counted and warned about
(``data.leakage``), and removed from training with ``data.dedup_across_splits``. Personal data is replaced by
placeholders (``data.redact``) in every split before that comparison, so nothing later sees the originals. What
each split read and kept is counted (``data.summary``; the task adds truncation and augmented copies).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.builtin import load_builtin
from glmtune.data.dataset_info import read_entry, resolve_dataset
from glmtune.data.leakage import DEDUP_REASON, drop_leaked, find_leakage
from glmtune.data.read import LINE_KEY, read_records, require_columns, where
from glmtune.data.redact import Redactor, redact_items, redact_splits
from glmtune.data.summary import SplitCounts, new_counts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One text with its label index (into ``ClassificationData.labels``) and where it came from."""

    text: str
    label: int
    line: int | None  # the record's position in ``source`` (see data.read.where for what it counts)
    source: str  # the file (or built-in dataset file) it was read from


@dataclass
class ClassificationData:
    """The three splits of a classification task and its label names (index = label id)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str]
    leakage: dict[str, Any] = field(default_factory=dict)  # data.leakage.find_leakage, + "removed_from_train"
    counts: dict[str, SplitCounts] = field(default_factory=dict)  # data.summary, per split

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def summary(self) -> dict[str, Any]:
        """Counts per split and class, for the run log: ``{"labels": [...], "train": {"total", "per_class",
        "counts"}}`` (``counts``: ``data.summary.SplitCounts.to_json``)."""
        summary: dict[str, Any] = {"labels": list(self.labels)}
        for name, examples in self.splits().items():
            counts = Counter(example.label for example in examples)
            summary[name] = {
                "total": len(examples),
                "per_class": {label: counts[index] for index, label in enumerate(self.labels)},
            }
            if name in self.counts:
                summary[name]["counts"] = self.counts[name].to_json()
        summary["leakage"] = dict(self.leakage)
        return summary


@dataclass(frozen=True)
class _Row:
    """An example before its label has an index."""

    text: str
    label: str
    line: int | None
    source: str


def _label_name(value: Any, path: str, line: int | None, field: str) -> str:
    """Labels may be strings or numbers in files; normalise to the string a config's ``labels`` would hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None or isinstance(
        value, (str, float)
    ):  # "", "  ", NaN (a missing value in a Parquet float column)
        raise UserError("empty value", **where(path, line), field=field, expected="a non-empty label")
    raise UserError(
        f"got a {type(value).__name__}",
        **where(path, line),
        field=field,
        expected="a string or integer label",
    )


def _rows_from_records(
    records: list[dict[str, Any]], path: str, text_column: str, label_column: str
) -> list[_Row]:
    require_columns(records, [text_column, label_column], path)
    rows = []
    for record in records:
        line, source = record.get(LINE_KEY), str(record.get("_source", path))
        text = record[text_column]
        if not isinstance(text, str):
            raise UserError(
                f"got a {type(text).__name__} ({text!r})",
                **where(source, line),
                field=text_column,
                expected="a string",
            )
        rows.append(_Row(text, _label_name(record[label_column], source, line, label_column), line, source))
    return rows


def text_label_columns(cfg: DataConfig, extra: dict[str, str] | None = None) -> tuple[str, str]:
    """The text and label columns: a dataset_info entry's, then ``data.columns``, then ``data.*_column``."""
    columns = {**(cfg.columns or {}), **(extra or {})}
    return columns.get("text", cfg.text_column), columns.get("label", cfg.label_column)


def _read_file(path: str, cfg: DataConfig) -> list[_Row]:
    records = read_records(path, encoding=cfg.encoding, sheet=cfg.sheet)
    return _rows_from_records(records, path, *text_label_columns(cfg))


def _label_sort_key(labels: set[str]):
    """Numeric order when every label is an integer ("2" before "10"), else alphabetical."""
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return int
    return str


def _label_set(cfg: DataConfig, train: list[_Row], train_source: str) -> list[str]:
    present = {row.label for row in train}
    if len(present) < 2:
        raise UserError(
            f"the training data has only one class ({', '.join(sorted(present))})",
            file=train_source,
            field=text_label_columns(cfg)[1],
            expected="at least 2 classes",
        )
    if cfg.labels is None:
        return sorted(present, key=_label_sort_key(present))
    labels = [label.strip() for label in cfg.labels]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(
            f"duplicate labels: {', '.join(duplicates)}", field="data.labels", expected="each label once"
        )
    return labels


def _check_labels(rows: list[_Row], labels: list[str], field: str, known_as: str) -> None:
    """Every row's label is in the label set; else a UserError at the first row that is not."""
    known = set(labels)
    for row in rows:
        if row.label not in known:
            raise UserError(
                f"label '{row.label}' is not in {known_as}",
                **where(row.source, row.line),
                field=field,
                expected="one of: " + ", ".join(labels),
            )


def split_count(size: float, total: int, name: str) -> int:
    """A split size as a count: a fraction (< 1) of ``total``, or a whole count (>= 1)."""
    if size == 0:
        return 0
    if size < 1:
        return max(1, round(size * total))
    if not float(size).is_integer():
        raise UserError(f"got {size}", field=name, expected="a fraction below 1, or a whole count")
    return int(size)


def _take(rows: list[_Row], count: int, seed: int, what: str) -> tuple[list[_Row], list[_Row]]:
    """Split off ``count`` rows, seeded and stratified by label where possible: (the rest, the taken)."""
    from sklearn.model_selection import train_test_split

    if count <= 0:
        return rows, []
    if count >= len(rows):
        return [], rows
    indices = list(range(len(rows)))
    labels = [row.label for row in rows]
    try:
        rest, taken = train_test_split(indices, test_size=count, random_state=seed, stratify=labels)
    except ValueError:  # a class with a single example, or fewer taken rows than classes
        logger.warning("%s: a class is too small to stratify; splitting without stratification", what)
        rest, taken = train_test_split(indices, test_size=count, random_state=seed)
    return [rows[i] for i in sorted(rest)], [rows[i] for i in sorted(taken)]


def _read_train(cfg: DataConfig) -> tuple[list[_Row], str]:
    """The training rows and the name to report them under (the file, or the built-in dataset)."""
    if cfg.train_file is not None:
        return _read_file(cfg.train_file, cfg), cfg.train_file
    if cfg.dataset_info is not None:  # data.dataset None: the file's only dataset
        entry = resolve_dataset(cfg.dataset_info, cfg.dataset)
        records = read_entry(entry, encoding=cfg.encoding, sheet=cfg.sheet)
        source = entry.files[0] if len(entry.files) == 1 else entry.name
        return _rows_from_records(records, source, *text_label_columns(cfg, entry.columns)), source
    assert cfg.dataset is not None  # DataConfig requires a source
    return _rows_from_records(load_builtin(cfg.dataset), cfg.dataset, "text", "label"), cfg.dataset


def _carve(
    cfg: DataConfig,
    train: list[_Row],
    train_source: str,
    validation: list[_Row] | None,
    test: list[_Row] | None,
) -> tuple[list[_Row], list[_Row], list[_Row]]:
    """Split validation/test sets out of the training rows where no file gives them."""
    total = len(train)
    test_count = split_count(cfg.test_size, total, "data.test_size") if test is None else 0
    validation_count = (
        split_count(cfg.validation_size, total, "data.validation_size") if validation is None else 0
    )
    if total - test_count - validation_count < 2:
        raise UserError(
            f"{total} examples leave {max(total - test_count - validation_count, 0)} for training after "
            f"{validation_count} validation and {test_count} test examples",
            file=train_source,
            field="data.validation_size",
            expected="smaller data.validation_size / data.test_size, or more data",
        )
    train, carved_test = _take(train, test_count, cfg.seed, f"{train_source} test split")
    train, carved_validation = _take(train, validation_count, cfg.seed, f"{train_source} validation split")
    return (
        train,
        validation if validation is not None else carved_validation,
        test if test is not None else carved_test,
    )


def _index(rows: list[_Row], labels: list[str]) -> list[Example]:
    ids = {label: index for index, label in enumerate(labels)}
    return [Example(row.text, ids[row.label], row.line, row.source) for row in rows]


def load_classification(cfg: DataConfig) -> ClassificationData:
    """Read, check, split and cap the data of a classification run (see the module docstring)."""
    train, train_source = _read_train(cfg)
    validation = _read_file(cfg.validation_file, cfg) if cfg.validation_file else None
    test = _read_file(cfg.test_file, cfg) if cfg.test_file else None

    labels = _label_set(cfg, train, train_source)
    label_column = text_label_columns(cfg)[1]
    if cfg.labels is not None:
        builtin = cfg.train_file is None and cfg.dataset_info is None
        _check_labels(train, labels, "label" if builtin else label_column, "data.labels")
    for rows in (validation, test):
        if rows is not None:
            known_as = "data.labels" if cfg.labels is not None else "the training data"
            _check_labels(rows, labels, label_column, known_as)

    train, validation, test = _carve(cfg, train, train_source, validation, test)
    counts = new_counts({"train": len(train), "validation": len(validation), "test": len(test)})
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        counts["train"].remove("over data.max_train_samples", len(train) - cfg.max_train_samples)
        _, train = _take(train, cfg.max_train_samples, cfg.seed, "data.max_train_samples")
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(validation):
        counts["validation"].remove("over data.max_eval_samples", len(validation) - cfg.max_eval_samples)
        _, validation = _take(validation, cfg.max_eval_samples, cfg.seed, "data.max_eval_samples")
    train, validation, test = redact_splits(
        {"train": train, "validation": validation, "test": test}, cfg.redact, Redactor.texted, counts
    )
    leakage = find_leakage({"train": train, "validation": validation, "test": test}, _text, _origin)
    if cfg.dedup_across_splits and leakage:
        kept = drop_leaked(train, [validation, test], _text)
        leakage["removed_from_train"] = len(train) - len(kept)
        counts["train"].remove(DEDUP_REASON, len(train) - len(kept))
        train = kept
    return ClassificationData(
        _index(train, labels), _index(validation, labels), _index(test, labels), labels, leakage, counts
    )


def _text(row: _Row) -> str:
    return row.text


def _origin(row: _Row) -> str:
    return f"{row.source}:{row.line}" if row.line is not None else row.source


def load_labelled_file(
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    labels: list[str] | None = None,
    *,
    encoding: str = "auto",
    sheet: str | None = None,
) -> list[Example]:
    """Examples of one labelled file (e.g. ``glmtune eval --data``), indexed by ``labels`` (a run's label set);
    a label outside it is an error at its line. Without ``labels`` the file's own labels, sorted."""
    records = read_records(path, encoding=encoding, sheet=sheet)
    rows = _rows_from_records(records, path, text_column, label_column)
    if labels is None:
        present = {row.label for row in rows}
        labels = sorted(present, key=_label_sort_key(present))
    else:
        _check_labels(rows, labels, label_column, "the run's labels")
    return _index(rows, labels)


def read_labelled_file(path: str, cfg: DataConfig, labels: list[str] | None = None) -> list[Example]:
    """``load_labelled_file`` read as training reads files: ``data.columns`` (or ``data.*_column``),
    ``data.encoding``, ``data.sheet`` and ``data.redact`` (``glmtune eval --data``, export's quality check)."""
    text, label = text_label_columns(cfg)
    examples = load_labelled_file(path, text, label, labels, encoding=cfg.encoding, sheet=cfg.sheet)
    return redact_items(examples, cfg.redact, Redactor.texted)[0]


def describe(data: ClassificationData) -> str:
    """One line for the console: ``train 800 · validation 100 · test 100 · labels: neg, pos``."""
    counts = " · ".join(f"{name} {len(rows)}" for name, rows in data.splits().items())
    return f"{counts} · labels: {', '.join(data.labels)}"
