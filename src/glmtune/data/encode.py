"""Texts → token ids → length-grouped, dynamically padded batches for classification on a causal LM.

Tokenisation uses the tokenizer's own special tokens (Gemma 3 needs its ``<bos>``), truncates the text but
never the special tokens around it, and counts how many texts were cut so training can report it. Batches
group texts of similar length (less padding, same epoch) and are padded on the right to the longest row of
the batch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glmtune.core.errors import UserError
from glmtune.models.load import pad_token_id

MEGA_BATCH_FACTOR = 50  # length groups are sorted within 50 batches' worth of shuffled examples
_ENCODE_CHUNK = 2048  # texts per tokenizer call: fast tokenizers parallelise within a call


# --------------------------------------------------------------------------- tokenisation


class EncodedTexts(NamedTuple):
    ids: list[list[int]]
    num_truncated: int  # texts longer than max_seq_len whose end was cut off


def _special_layout(tokenizer: Any) -> tuple[list[int], int, int]:
    """How the tokenizer frames a text, found by encoding a probe with and without special tokens:
    (ids we prepend ourselves: BOS when the tokenizer has one but adds nothing, special tokens at the head,
    special tokens at the tail: kept when a text is truncated)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    if full == plain:  # adds nothing: prepend BOS ourselves where the model has one
        bos = getattr(tokenizer, "bos_token_id", None)
        return ([bos], 1, 0) if bos is not None else ([], 0, 0)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return [], start, len(full) - start - len(plain)
    return [], 0, 0  # the probe's own tokens change with special tokens: keep the head, like plain truncation


def encode_texts(tokenizer: Any, texts: Sequence[str], max_seq_len: int) -> EncodedTexts:
    """Token ids per text with the tokenizer's special tokens, cut to ``max_seq_len`` keeping BOS/EOS."""
    prefix, head, tail = _special_layout(tokenizer)
    if max_seq_len <= head + tail:
        raise UserError(
            f"got {max_seq_len}, which leaves no room for text after the tokenizer's {head + tail} special tokens",
            field="train.max_seq_len",
            expected=f"more than {head + tail}",
        )
    ids: list[list[int]] = []
    truncated = 0
    for start in range(0, len(texts), _ENCODE_CHUNK):
        chunk = list(texts[start : start + _ENCODE_CHUNK])
        # verbose=False: we truncate below, so "longer than the model's maximum length" warnings are noise.
        encoded = tokenizer(chunk, add_special_tokens=True, return_attention_mask=False, verbose=False)
        for row in encoded["input_ids"]:
            row = prefix + list(row)
            if len(row) > max_seq_len:
                truncated += 1
                row = row[: max_seq_len - tail] + (row[len(row) - tail :] if tail else [])
            ids.append(row)
    return EncodedTexts(ids, truncated)


# --------------------------------------------------------------------------- dataset and collate


class ClassificationDataset(Dataset):
    """Encoded texts and their label ids; items carry their index so predictions can be put back in order."""

    def __init__(self, input_ids: list[list[int]], labels: list[int], pad_id: int, num_truncated: int = 0):
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} texts but {len(labels)} labels")
        self.input_ids, self.labels = input_ids, labels
        self.pad_id, self.num_truncated = pad_id, num_truncated
        self.lengths = [len(ids) for ids in input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[index], "label": self.labels[index], "index": index}


def encode_examples(tokenizer: Any, examples: Sequence[Any], max_seq_len: int) -> ClassificationDataset:
    """``data.Example``s → a ClassificationDataset (``num_truncated`` says how many texts were cut)."""
    encoded = encode_texts(tokenizer, [example.text for example in examples], max_seq_len)
    labels = [example.label for example in examples]
    return ClassificationDataset(encoded.ids, labels, pad_token_id(tokenizer), encoded.num_truncated)


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of this batch: input_ids/attention_mask [batch, len], labels/index [batch]."""
    max_len = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), max_len), pad_id, dtype=torch.long)  # [batch, max_len]
    attention_mask = torch.zeros((len(batch), max_len), dtype=torch.long)  # [batch, max_len]
    for row, item in enumerate(batch):
        ids = item["input_ids"]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([item["label"] for item in batch], dtype=torch.long),  # [batch]
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),  # [batch]
    }


# --------------------------------------------------------------------------- batching


class EpochPermutation(Sampler[int]):
    """Indices ``0..n-1`` in an order fixed by ``(seed, epoch)`` (identity when not shuffling).

    Every process computes the same order from the same seed, so DDP shards agree without communicating.
    It is the ``sampler`` of LengthGroupedBatchSampler, which is where accelerate sets the epoch once it has
    wrapped the batch sampler for DDP (``batch_sampler.batch_sampler.sampler.set_epoch``).
    """

    def __init__(self, num_items: int, seed: int, shuffle: bool = True):
        self.num_items, self.seed, self.shuffle, self.epoch = num_items, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, stream: int = 0) -> np.random.Generator:
        """A numpy generator for (seed, epoch, stream): independent streams for independent choices."""
        return np.random.default_rng([self.seed, self.epoch, stream])

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return self.rng(0).permutation(self.num_items)

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.num_items


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices of similar length; every index exactly once per epoch, deterministic per seed.

    Shuffled: a ``(seed, epoch)`` permutation is cut into mega-batches of ``50 × batch_size``, each sorted by
    length (longest first) and cut into batches, and the full batches are shuffled. Not shuffled: with
    ``group_by_length`` the whole set sorted by length (evaluation: least padding; use the items' ``index``
    to restore order), else plain in-order batches. Only the last batch may be short: accelerate's DDP
    ``BatchSamplerShard`` assumes so, and would silently skip a short batch in the middle.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        group_by_length: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.drop_last, self.group_by_length = batch_size, drop_last, group_by_length
        self.sampler = EpochPermutation(len(self.lengths), seed, shuffle)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's shuffle (accelerate's DataLoaderShard calls this at each new epoch)."""
        self.sampler.set_epoch(epoch)

    def _by_length(self, indices: np.ndarray) -> np.ndarray:
        return indices[np.argsort(-self.lengths[indices], kind="stable")]

    def batches(self) -> list[list[int]]:
        """This epoch's batches."""
        order = self.sampler.order()
        if self.group_by_length and self.sampler.shuffle:
            mega = MEGA_BATCH_FACTOR * self.batch_size
            chunks = [self._by_length(order[i : i + mega]) for i in range(0, len(order), mega)]
            order = np.concatenate(chunks) if chunks else order
        elif self.group_by_length:
            order = self._by_length(order)
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        if self.sampler.shuffle and self.group_by_length:
            batches = [batches[i] for i in self.sampler.rng(1).permutation(len(batches))]
        if short is not None and not self.drop_last:
            batches.append(short)
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return math.ceil(len(self.lengths) / self.batch_size)


def make_loader(
    dataset: ClassificationDataset,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = False,
    group_by_length: bool = True,
    pad_id: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader of padded batches (see LengthGroupedBatchSampler); ``pad_id`` defaults to the dataset's."""
    pad = dataset.pad_id if pad_id is None else pad_id
    return grouped_loader(
        dataset, partial(collate, pad_id=pad), batch_size, seed, shuffle, group_by_length, drop_last
    )


def grouped_loader(
    dataset: Any,
    collate_fn: Any,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = False,
    group_by_length: bool = True,
    drop_last: bool = False,
) -> DataLoader:
    """The one way glmtune batches: a ``dataset`` with ``lengths``, length-grouped batches
    (LengthGroupedBatchSampler), ``collate_fn`` making each batch, in this process."""
    sampler = LengthGroupedBatchSampler(
        dataset.lengths,
        batch_size,
        seed,
        shuffle=shuffle,
        drop_last=drop_last,
        group_by_length=group_by_length,
    )
    # A private generator: creating an iterator draws a base seed from it. From the global RNG, that draw
    # would shift every dropout mask after a resume (the resumed run creates its iterator at another time).
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
