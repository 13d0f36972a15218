"""Packing: several short encoded conversations per training sequence, each still seeing only itself.

``pack`` puts examples into rows of at most ``max_seq_len`` tokens (best fit, longest first: few rows, little
padding, the same rows on every machine). Each example keeps its own ``position_ids`` (restarting at 0), and
its first label is ``-100``: with the usual shift (logits at ``t`` predict ``labels[t + 1]``) the last token of
one example must not learn to predict the first token of the next.

The attention boundary comes from transformers itself: in transformers 5, ``masking_utils.create_causal_mask``
detects packed rows from ``position_ids`` (``find_packed_sequence_indices``: a position that does not follow
its predecessor by 1 starts a new sequence) and builds a block-diagonal causal mask, for SDPA, eager and flex
attention alike (flash-attention uses the same position_ids for its variable-length kernels). It does so only
when the forward gets **no** ``attention_mask`` and **no cache**. The cache is the trap: with the config's
default ``use_cache=True`` a Llama creates an empty ``DynamicCache`` even in training mode, the packed rows are
then not detected, and examples silently attend to each other (measured: the summed loss of a packed batch
moved by 0.35 nats on a tiny Llama). So a packed batch is ``input_ids``, ``position_ids``, ``labels`` and
``use_cache=False``, nothing else: ``collate_packed`` returns exactly that, for ``model(**batch)``. Padding at
the end of a row gets positions of its own (0, 1, ...), so it forms a block nobody attends to.

Models with their own attention code (not ``create_causal_mask``; ChatGLM3's native port, remote code) may
ignore packed positions: ``packing_supported(model)`` checks a model on two tiny sequences before training.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from glmtune.data.templates import IGNORE_INDEX


class PackedExample(NamedTuple):
    """One training row made of several examples; ``lengths`` are theirs, in order."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    lengths: list[int]


def pack(encoded: Sequence[Any], max_seq_len: int) -> list[PackedExample]:
    """Encoded examples (anything with ``input_ids`` and ``labels``, e.g. ``EncodedConversation``) → packed rows.

    Empty (dropped) examples are skipped; an example longer than ``max_seq_len`` is a ValueError (encode with
    the same ``max_seq_len`` first). Best-fit decreasing: each example, longest first, goes into the row with
    the least room that still fits it.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
    items = [(list(e.input_ids), list(e.labels)) for e in encoded if len(e.input_ids)]
    for ids, labels in items:
        if len(ids) > max_seq_len:
            raise ValueError(f"an example of {len(ids)} tokens does not fit max_seq_len={max_seq_len}")
        if len(labels) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))  # stable: ties keep dataset order
    rows: list[list[int]] = []  # example indices per row
    room: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for index in order:
        length = len(items[index][0])
        slot = bisect.bisect_left(room, (length, -1))
        if slot < len(room):
            free, row = room.pop(slot)
        else:
            free, row = max_seq_len, len(rows)
            rows.append([])
        rows[row].append(index)
        if free - length > 0:
            bisect.insort(room, (free - length, row))
    packed = []
    for members in rows:
        input_ids, labels, position_ids, lengths = [], [], [], []
        for index in members:
            ids, example_labels = items[index]
            input_ids += ids
            labels += [IGNORE_INDEX] + example_labels[1:]  # never learn across the boundary
            position_ids += range(len(ids))
            lengths.append(len(ids))
        packed.append(PackedExample(input_ids, labels, position_ids, lengths))
    return packed


def collate_packed(batch: Sequence[PackedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``labels`` and ``position_ids`` [batch, longest row], ``use_cache=False``
    and no attention mask (see the module docstring: the mask comes from the positions): ``model(**batch)``."""
    width = max(len(row.input_ids) for row in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [batch, width]
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # [batch, width]
    position_ids = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, width]
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        position_ids[row, :n] = torch.tensor(example.position_ids)
        position_ids[row, n:] = torch.arange(width - n)  # padding: a block of its own
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}


@torch.no_grad()
def packing_supported(model: Any, tolerance: float | None = None) -> bool:
    """Whether ``model`` keeps packed examples apart: logits of two short sequences packed in one row equal
    their logits computed alone (relative to the largest logit; 1e-4 in fp32, 2e-2 in half precision)."""
    parameter = next(model.parameters())
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab, (1, 7), generator=generator).to(parameter.device)
    second = torch.randint(0, vocab, (1, 5), generator=generator).to(parameter.device)
    was_training = model.training
    model.eval()
    try:
        alone = [model(input_ids=ids, use_cache=False).logits[0] for ids in (first, second)]
        positions = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0).to(parameter.device)
        packed = model(input_ids=torch.cat([first, second], dim=1), position_ids=positions, use_cache=False)
    finally:
        model.train(was_training)
    expected = torch.cat(alone).float()  # [12, vocab]
    scale = expected.abs().max().clamp_min(1e-6)
    if tolerance is None:
        tolerance = 1e-4 if parameter.dtype in (torch.float32, torch.float64) else 2e-2
    return bool(((packed.logits[0].float() - expected).abs().max() / scale) <= tolerance)


__all__ = ["PackedExample", "collate_packed", "pack", "packing_supported"]
