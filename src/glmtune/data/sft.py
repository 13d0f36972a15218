"""SFT data: conversations read from files or built-in datasets → mixed, split splits → padded or packed batches.

Sources: ``data.dataset`` (a built-in generation dataset), ``data.train_file`` (``data.format``), or
``data.train_files`` (several files / built-in datasets, each with a ``weight``: see ``conversation.mix``).
Validation and test come from ``data.validation_file`` / ``data.test_file`` or are carved (seeded by
``data.seed``) from the pool of all sources *before* weighting, so a repeated example never leaks into them.
Encoding is ``data.templates``; batches reuse the length-grouped sampler of ``data.encode``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from glmtune.core.config import DataConfig, TrainSource
from glmtune.core.errors import UserError
from glmtune.data.classification import split_count
from glmtune.data.conversation import Conversation, load_builtin_conversations, load_conversations, mix
from glmtune.data.encode import LengthGroupedBatchSampler
from glmtune.data.packing import collate_packed, pack
from glmtune.data.templates import IGNORE_INDEX, EncodedConversation


@dataclass
class SFTData:
    """The three splits of an SFT run."""

    train: list[Conversation]
    validation: list[Conversation]
    test: list[Conversation]

    def summary(self) -> dict[str, Any]:
        return {name: {"total": len(getattr(self, name))} for name in ("train", "validation", "test")}


def _sources(cfg: DataConfig) -> list[TrainSource]:
    if cfg.train_files:
        return list(cfg.train_files)
    if cfg.train_file is not None:
        return [TrainSource(path=cfg.train_file, format=cfg.format)]
    return [TrainSource(dataset=cfg.dataset)]


def _read(source: TrainSource) -> list[Conversation]:
    if source.dataset is not None:
        return load_builtin_conversations(source.dataset)
    conversations = load_conversations(source.path, source.format)
    if not conversations:
        raise UserError("no conversations in the file", file=source.path, expected="at least one record")
    return conversations


def load_sft(cfg: DataConfig) -> SFTData:
    """Read, check, split and mix the data of an SFT run (see the module docstring)."""
    sources = _sources(cfg)
    pools = [_read(source) for source in sources]
    validation = load_conversations(cfg.validation_file, cfg.format) if cfg.validation_file else None
    test = load_conversations(cfg.test_file, cfg.format) if cfg.test_file else None
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
    if len(sources) == 1 and weights[0] == 1.0:
        train = remaining[0]  # file order; the loader shuffles
    else:
        train = mix(remaining, weights, cfg.seed)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        keep = sorted(random.Random(cfg.seed).sample(range(len(train)), cfg.max_train_samples))
        train = [train[i] for i in keep]
    validation = validation if validation is not None else carved_validation
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(validation):
        keep = sorted(random.Random(cfg.seed).sample(range(len(validation)), cfg.max_eval_samples))
        validation = [validation[i] for i in keep]
    return SFTData(train, validation, test if test is not None else carved_test)


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
    sampler = LengthGroupedBatchSampler(
        dataset.lengths, batch_size, seed, shuffle=shuffle, group_by_length=group_by_length
    )
    # A private generator, as in data.encode.make_loader (a resumed run draws the same dropout masks).
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


__all__ = [
    "ConversationDataset",
    "PackedDataset",
    "SFTData",
    "collate_conversations",
    "load_sft",
    "make_sft_loader",
]
