"""LLaMA-Factory's ``dataset_info.json``: a dataset's name → its local file, format and field names.

``data.dataset_info`` points at the JSON; ``data.dataset`` (or a ``train_files`` entry's ``dataset``) names an
entry. Read as LLaMA-Factory documents it: ``file_name`` (a file or a folder of files, relative to the JSON's
folder), ``formatting`` (``alpaca``, the default, or ``sharegpt``), ``columns`` (alpaca's ``prompt``, ``query``,
``response`` are glmtune's ``instruction``, ``input``, ``output``; ``history``, ``messages``, ``system``,
``tools`` keep their names) and ``tags`` (``role_tag``, ``content_tag``, ``user_tag``, ...: the same keys in
``data.columns``). What glmtune cannot do is refused with the entry's name, never skipped: hub datasets
(``hf_hub_url``, ...: download them and set ``file_name``), preference data (``ranking``, ``chosen``,
``rejected``, ``kto_tag``), images, videos and audio, ``num_samples``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from glmtune.core.config.model_data import DATA_COLUMNS, DATA_TAGS
from glmtune.core.errors import UserError
from glmtune.data.read import READERS, Record, read_records

_ALPACA_NAMES = {"prompt": "instruction", "query": "input", "response": "output"}
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_UNSUPPORTED = {
    "ranking": "preference data needs a preference task, which glmtune does not have yet",
    "num_samples": "not supported; use data.max_train_samples or a data.train_files weight",
    "subset": "for hub datasets only; glmtune reads local files",
    "folder": "for hub datasets only; glmtune reads local files",
}
_IGNORED = ("file_sha1",)  # documented as not affecting training
_MEDIA = ("images", "videos", "audios", "chosen", "rejected", "kto_tag")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a dataset_info.json: its files, format and glmtune field names (``data.columns`` keys)."""

    name: str
    files: tuple[str, ...]
    format: str
    columns: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=8)
def _read_info(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise UserError(
            "file not found", file=path, field="data.dataset_info", expected="a dataset_info.json"
        )
    try:
        info = json.loads(file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"not readable JSON ({error})", file=path, expected="a dataset_info.json") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise UserError(
            "not a mapping of dataset names to entries", file=path, expected="a dataset_info.json"
        )
    return info


def _columns(entry: dict[str, Any], name: str, path: str, formatting: str) -> dict[str, str]:
    """The entry's ``columns`` and ``tags`` as ``data.columns`` keys."""
    columns: dict[str, str] = {}
    for key, value in (entry.get("columns") or {}).items():
        if key in _MEDIA:
            raise UserError(
                f"dataset '{name}' has a '{key}' column",
                file=path,
                field=f"{name}.columns.{key}",
                expected="text datasets only (glmtune trains on text, without preference pairs)",
            )
        canonical = _ALPACA_NAMES.get(key, key) if formatting == "alpaca" else key
        if canonical not in DATA_COLUMNS:
            raise UserError(
                f"unknown column key '{key}'",
                file=path,
                field=f"{name}.columns",
                expected="one of: prompt, query, response, history, messages, system, tools",
            )
        columns[canonical] = str(value)
    for key, value in (entry.get("tags") or {}).items():
        if key not in DATA_TAGS:
            raise UserError(
                f"unknown tag '{key}'",
                file=path,
                field=f"{name}.tags",
                expected="one of: " + ", ".join(DATA_TAGS),
            )
        columns[key] = str(value)
    return columns


def _files(file_name: str, name: str, path: str) -> tuple[str, ...]:
    """The entry's file, or the data files of its folder (sorted), relative to the JSON's folder."""
    target = Path(file_name) if Path(file_name).is_absolute() else Path(path).parent / file_name
    if target.is_dir():
        files = sorted(str(p) for p in target.iterdir() if p.is_file() and p.suffix.lower() in READERS)
        if not files:
            raise UserError(
                f"dataset '{name}': the folder {target} has no data files",
                file=path,
                field=f"{name}.file_name",
                expected="one of: " + ", ".join(READERS),
            )
        return tuple(files)
    if not target.is_file():
        raise UserError(
            f"dataset '{name}': {target} not found",
            file=path,
            field=f"{name}.file_name",
            expected="an existing file",
        )
    return (str(target),)


def dataset_name(info_path: str, name: str | None) -> str:
    """``name``, or the only dataset of the dataset_info.json when none is named; naming none of several is an
    error that lists them."""
    if name is not None:
        return name
    names = list(_read_info(str(info_path)))
    if len(names) != 1:
        raise UserError(
            f"data.dataset_info defines {len(names)} datasets and data.dataset names none of them",
            field="data.dataset",
            expected="one of: " + ", ".join(names) if names else "a dataset_info.json with a dataset",
        )
    return names[0]


def resolve_dataset(info_path: str, name: str | None) -> DatasetEntry:
    """The entry ``name`` of the dataset_info.json at ``info_path`` (see the module docstring); ``None``: its only
    entry (``dataset_name``)."""
    name = dataset_name(info_path, name)
    info = _read_info(str(info_path))
    if name not in info:
        raise UserError(
            f"no dataset '{name}' in {info_path}", field="data.dataset", expected="one of: " + ", ".join(info)
        )
    entry = info[name]
    for key in _HUB_KEYS:
        if entry.get(key):
            raise UserError(
                f"dataset '{name}' comes from {key}",
                file=str(info_path),
                field=f"{name}.{key}",
                expected="a local file: download it and set file_name (glmtune never downloads data)",
            )
    for key, why in _UNSUPPORTED.items():
        if entry.get(key):
            raise UserError(f"dataset '{name}' sets {key}: {why}", file=str(info_path), field=f"{name}.{key}")
    known = {"file_name", "formatting", "columns", "tags", "split", *_HUB_KEYS, *_UNSUPPORTED, *_IGNORED}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise UserError(
            f"dataset '{name}' has unknown keys: {', '.join(unknown)}",
            file=str(info_path),
            expected="file_name, formatting, columns, tags",
        )
    if entry.get("split", "train") != "train":
        raise UserError(
            f"dataset '{name}' reads split {entry['split']!r}",
            file=str(info_path),
            field=f"{name}.split",
            expected="train (a local file is one split)",
        )
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise UserError(
            f"formatting {formatting!r}",
            file=str(info_path),
            field=f"{name}.formatting",
            expected="alpaca or sharegpt",
        )
    if not isinstance(entry.get("file_name"), str):
        raise UserError(
            f"dataset '{name}' has no file_name",
            file=str(info_path),
            field=f"{name}.file_name",
            expected="the dataset's file or folder, relative to the dataset_info.json",
        )
    columns = _columns(entry, name, str(info_path), formatting)
    return DatasetEntry(name, _files(entry["file_name"], name, str(info_path)), formatting, columns)


def read_entry(entry: DatasetEntry, *, encoding: str = "auto", sheet: str | None = None) -> list[Record]:
    """Every record of the entry's files, each with its own file under ``"_source"`` (for errors)."""
    records: list[Record] = []
    for file in entry.files:
        for record in read_records(file, encoding=encoding, sheet=sheet):
            record.setdefault("_source", file)
            records.append(record)
    return records


__all__ = ["DatasetEntry", "dataset_name", "read_entry", "resolve_dataset"]
