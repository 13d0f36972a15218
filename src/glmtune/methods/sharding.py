"""Weights of a sharded model (accelerate's FSDP2: each parameter a ``DTensor`` holding this process's shard).

:func:`whole_tensors_fit` lets the plain loading code (``param.copy_``, ``load_state_dict``, peft's
``set_peft_model_state_dict``) put whole tensors, read from a run folder or a checkpoint, into sharded parameters:
each process keeps its own slice, with no communication. Gathering shards into whole tensors is a collective and
lives with the training loop (``glmtune.train.sharded``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def whole_tensors_fit(model: nn.Module) -> Iterator[None]:
    """Within it, a whole tensor copied into a sharded parameter of ``model`` is taken as replicated (torch's
    ``implicit_replication``), so each process keeps its slice. Does nothing for an unsharded model."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.tensor.experimental import implicit_replication

    with implicit_replication():
        yield


__all__ = ["is_sharded", "whole_tensors_fit"]
