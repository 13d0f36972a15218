"""Which training examples a finished classification run actually trained on, in the order it saw them.

A time-budgeted run stops inside its first epoch: a baseline "trained on the same reviews" must get those
reviews, not a random sample of the same size. This replays the loop's batch order — the same sampler, seed,
epochs and lengths as ``glmtune train`` (``data.LengthGroupedBatchSampler``, one process) — for the run's
``metrics.json`` ``steps`` × ``train.grad_accum`` micro-batches.

    .venv/bin/python benchmarks/seen_reviews.py RUN_DIR      # prints how many distinct examples were seen
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from glmtune.core import config
from glmtune.data.encode import LengthGroupedBatchSampler


def seen_indices(run_dir: Path) -> tuple[list[int], list]:
    """(indices into the run's training split in the order trained, that split's examples)."""
    from glmtune.infer import classifier
    from glmtune.models.load import load_tokenizer
    from glmtune.train import tasks

    cfg = config.load(run_dir / "config.yaml")
    steps = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["steps"]
    task = tasks.create(cfg)
    task.load_data()
    train = task.splits["train"]
    lengths = classifier.encode(task, load_tokenizer(cfg.model), train, cfg.train.max_seq_len).lengths
    sampler = LengthGroupedBatchSampler(
        lengths, cfg.train.batch_size, cfg.train.seed, shuffle=True, group_by_length=cfg.train.group_by_length
    )
    order, micro_batches, epoch = [], steps * cfg.train.grad_accum, 0
    while micro_batches > 0:
        sampler.set_epoch(epoch)
        for batch in sampler.batches()[:micro_batches]:
            order.extend(batch)
        micro_batches -= len(sampler)
        epoch += 1
    return order, train


if __name__ == "__main__":
    indices, examples = seen_indices(Path(sys.argv[1]))
    print(f"{len(indices)} examples trained on ({len(set(indices))} distinct of {len(examples)})")
