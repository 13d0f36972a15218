"""SFT data: conversations read from files or built-in datasets → mixed, split splits → padded or packed batches.

Sources: ``data.dataset`` (a built-in generation dataset, or one of ``data.dataset_info``), ``data.train_file``
(``data.format``, ``data.columns``), or ``data.train_files`` (several files / datasets, each with a ``weight``:
see ``conversation.mix``). Validation and test come from ``data.validation_file`` / ``data.test_file`` or are
carved (seeded by ``data.seed``) from the pool of all sources *before* weighting, so a repeated example never
leaks into them; conversations found in two splits anyway (the same text in two files) are counted and warned
about (``data.leakage``), and removed from training with ``data.dedup_across_splits``. Personal data is replaced by
placeholders (``data.redact``) in every message before that comparison. What each split read and kept is counted
(``data.summary``: the task adds what encoding truncated and dropped).
Encoding is ``data.templates``; batches reuse the length-grouped sampler of ``data.encode``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from glmtune.core.config import DataConfig, TrainSource
from glmtune.core.errors import UserError
from glmtune.data.classification import split_count
from glmtune.data.conversation import (
    Conversation,
    conversations_from_records,
    load_builtin_conversations,
    mix,
)
from glmtune.data.dataset_info import dataset_name, read_entry, resolve_dataset
from glmtune.data.encode import grouped_loader
from glmtune.data.leakage import DEDUP_REASON, drop_leaked, find_leakage
from glmtune.data.packing import collate_packed, pack
from glmtune.data.read import read_records
from glmtune.data.redact import Redactor, redact_items, redact_splits
from glmtune.data.summary import SplitCounts, new_counts
from glmtune.data.templates import IGNORE_INDEX, EncodedConversation


@dataclass
class SFTData:
    """The three splits of an SFT run."""

    train: list[Conversation]
    validation: list[Conversation]
    test: list[Conversation]
    leakage: dict[str, Any] = field(default_factory=dict)  # data.leakage.find_leakage, + "removed_from_train"
    counts: dict[str, SplitCounts] = field(default_factory=dict)  # data.summary, per split

    def summary(self) -> dict[str, Any]:
        """data_summary.json: per split its conversations (``total``) and ``counts``; the ``leakage``."""
        summary: dict[str, Any] = {}
        for name in ("train", "validation", "test"):
            summary[name] = {"total": len(getattr(self, name))}
            if name in self.counts:
                summary[name]["counts"] = self.counts[name].to_json()
        summary["leakage"] = dict(self.leakage)
        return summary


def _sources(cfg: DataConfig) -> list[TrainSource]:
    if cfg.train_files:
        return list(cfg.train_files)
    if cfg.train_file is not None:
        return [TrainSource(path=cfg.train_file, format=cfg.format)]
    if cfg.dataset_info is not None:  # data.dataset may be left out when the file defines one dataset
        return [TrainSource(dataset=dataset_name(cfg.dataset_info, cfg.dataset))]
    return [TrainSource(dataset=cfg.dataset)]


def read_file(
    path: str, cfg: DataConfig, format: str | None = None, *, require_reply: bool = True
) -> list[Conversation]:
    """The conversations of one file, read as training reads them: ``data.format`` (or ``format``),
    ``data.columns``, ``data.encoding``, ``data.sheet``, ``data.redact`` (``glmtune eval --data``, export's quality
    check). ``require_reply=False`` reads prompts to reply to: the user's own input, never redacted."""
    conversations = _read_file(path, format or cfg.format, cfg, require_reply=require_reply)
    if not require_reply:
        return conversations
    return redact_items(conversations, cfg.redact, Redactor.conversation)[0]


def _read_file(path: str, format: str, cfg: DataConfig, *, require_reply: bool = True) -> list[Conversation]:
    """The conversations of a file as written (``load_sft`` redacts its splits itself, counting)."""
    records = read_records(path, encoding=cfg.encoding, sheet=cfg.sheet)
    return conversations_from_records(records, path, format, require_reply=require_reply, columns=cfg.columns)


def _read(source: TrainSource, cfg: DataConfig) -> list[Conversation]:
    if source.dataset is not None and cfg.dataset_info is not None:
        entry = resolve_dataset(cfg.dataset_info, source.dataset)
        records = read_entry(entry, encoding=cfg.encoding, sheet=cfg.sheet)
        columns = {**(cfg.columns or {}), **entry.columns}
        name = entry.files[0] if len(entry.files) == 1 else source.dataset
        return conversations_from_records(records, name, entry.format, columns=columns)
    if source.dataset is not None:
        return load_builtin_conversations(source.dataset)
    assert source.path is not None
    conversations = _read_file(source.path, source.format, cfg)
    if not conversations:
        raise UserError("no conversations in the file", file=source.path, expected="at least one record")
    return conversations


def _given_splits(sources: list[TrainSource], cfg: DataConfig) -> dict[str, list[Conversation]] | None:
    """The splits a built-in dataset comes with (``split_field``), when it is the only source; else None."""
    from glmtune.data.builtin import dataset_for

    if len(sources) != 1 or sources[0].dataset is None or cfg.dataset_info is not None:
        return None
    dataset = dataset_for(sources[0].dataset, "generation")
    if dataset.split_field is None:
        return None
    records = dataset.loader()
    conversations = conversations_from_records(records, dataset.name, dataset.format)
    splits: dict[str, list[Conversation]] = {"train": [], "validation": [], "test": []}
    for record, conversation in zip(records, conversations, strict=True):
        splits[record[dataset.split_field]].append(conversation)
    return splits


def load_sft(cfg: DataConfig) -> SFTData:
    """Read, check, split and mix the data of an SFT run (see the module docstring)."""
    sources = _sources(cfg)
    given = _given_splits(sources, cfg)  # a built-in dataset with its own splits (xinghe-qa: by product)
    pools = [given["train"]] if given else [_read(source, cfg) for source in sources]
    validation = _read_file(cfg.validation_file, cfg.format, cfg) if cfg.validation_file else None
    test = _read_file(cfg.test_file, cfg.format, cfg) if cfg.test_file else None
    if given:
        validation, test = validation or given["validation"], test or given["test"]
    total = sum(len(pool) for pool in pools)
    n_test = split_count(cfg.test_size, total, "data.test_size") if test is None else 0
    n_validation = (
        split_count(cfg.validation_size, total, "data.validation_size") if validation is None else 0
    )
    if total - n_test - n_validation < 1:
        raise UserError(
            f"{total} conversations leave none for training after {n_validation} validation and {n_test} test",
            field="data.validation_size",
            expected="smaller data.validation_size / data.test_size, or more data",
        )
    # Carve from the unweighted pool: (source, position) pairs, seeded.
    tagged = [(s, i) for s, pool in enumerate(pools) for i in range(len(pool))]
    random.Random(cfg.seed).shuffle(tagged)
    held_set = set(tagged[: n_test + n_validation])
    carved_test = [pools[s][i] for s, i in sorted(tagged[:n_test])]
    carved_validation = [pools[s][i] for s, i in sorted(tagged[n_test : n_test + n_validation])]
    remaining = [[c for i, c in enumerate(pool) if (s, i) not in held_set] for s, pool in enumerate(pools)]
    weights = [source.weight for source in sources]
    validation = validation if validation is not None else carved_validation
    test = test if test is not None else carved_test
    read = sum(len(pool) for pool in remaining)
    counts = new_counts({"train": read, "validation": len(validation), "test": len(test)})
    if len(sources) == 1 and weights[0] == 1.0:
        train = remaining[0]  # file order; the loader shuffles
    else:
        train = mix(remaining, weights, cfg.seed)
        counts["train"].resize("mixing weights (data.train_files)", read, len(train))
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        counts["train"].remove("over data.max_train_samples", len(train) - cfg.max_train_samples)
        keep = sorted(random.Random(cfg.seed).sample(range(len(train)), cfg.max_train_samples))
        train = [train[i] for i in keep]
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(validation):
        counts["validation"].remove("over data.max_eval_samples", len(validation) - cfg.max_eval_samples)
        keep = sorted(random.Random(cfg.seed).sample(range(len(validation)), cfg.max_eval_samples))
        validation = [validation[i] for i in keep]
    train, validation, test = redact_splits(
        {"train": train, "validation": validation, "test": test}, cfg.redact, Redactor.conversation, counts
    )
    leakage = find_leakage({"train": train, "validation": validation, "test": test}, _text, _origin)
    if cfg.dedup_across_splits and leakage:
        kept = drop_leaked(train, [validation, test], _text)
        leakage["removed_from_train"] = len(train) - len(kept)
        counts["train"].remove(DEDUP_REASON, len(train) - len(kept))
        train = kept
    return SFTData(train, validation, test, leakage, counts)


def _text(conversation: Conversation) -> str:
    """What two conversations are compared by: every turn's role, text and tool calls."""
    return "\n".join(
        f"{m.role}:{m.content}" + (json.dumps(m.tool_calls, ensure_ascii=False) if m.tool_calls else "")
        for m in conversation.messages
    )


def _origin(conversation: Conversation) -> str:
    return (
        f"{conversation.source}:{conversation.line}" if conversation.line is not None else conversation.source
    )


# --------------------------------------------------------------------------- batches


class ConversationDataset(Dataset):
    """Encoded conversations: ``{"index", "input_ids", "labels"}`` items, ``lengths`` for the sampler."""

    def __init__(self, examples: Sequence[EncodedConversation]):
        self.examples = list(examples)
        self.lengths = [len(e.input_ids) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        return {"index": index, "input_ids": example.input_ids, "labels": example.labels}


def collate_conversations(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding) [batch, longest] and
    ``index`` [batch]."""
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [batch, width]
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # [batch, width]
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, width]
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.tensor(item["input_ids"])
        labels[row, :n] = torch.tensor(item["labels"])
        attention_mask[row, :n] = 1
    index = torch.tensor([item["index"] for item in batch], dtype=torch.long)  # [batch]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": index}


class PackedDataset(Dataset):
    """Packed rows (``data.packing``): several conversations per row, ``lengths`` for the sampler."""

    def __init__(self, examples: Sequence[EncodedConversation], max_seq_len: int):
        self.rows = pack(examples, max_seq_len)
        self.lengths = [len(row.input_ids) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        return self.rows[index]


def _collate_packed(batch: list[Any], pad_id: int) -> dict[str, Any]:
    out = collate_packed(batch, pad_id)
    out["num_tokens"] = torch.tensor([len(row.input_ids) for row in batch], dtype=torch.long)  # [batch]
    return out


def make_sft_loader(
    examples: Sequence[EncodedConversation],
    batch_size: int,
    pad_id: int,
    *,
    seed: int = 0,
    shuffle: bool = False,
    group_by_length: bool = True,
    packing_len: int | None = None,
) -> DataLoader:
    """Length-grouped batches of encoded conversations; ``packing_len`` packs rows of that many tokens."""
    if packing_len is not None:
        dataset: Dataset = PackedDataset(examples, packing_len)
        collate = partial(_collate_packed, pad_id=pad_id)
    else:
        dataset = ConversationDataset(examples)
        collate = partial(collate_conversations, pad_id=pad_id)
    return grouped_loader(dataset, collate, batch_size, seed, shuffle, group_by_length)


__all__ = [
    "ConversationDataset",
    "PackedDataset",
    "SFTData",
    "collate_conversations",
    "load_sft",
    "read_file",
    "make_sft_loader",
]
