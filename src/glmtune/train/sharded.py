"""Sharded training (accelerate's FSDP, ``fsdp_version: 2``): what glmtune writes stays whole; decisions are agreed.

Under FSDP every parameter of the prepared model is a ``DTensor`` holding this process's shard. glmtune's files
do not change with the number of processes: the run folder's weights (``methods.save``) and a checkpoint's
trainable tensors and optimizer state are gathered into full tensors on the main process's CPU with torch's
public ``torch.distributed.checkpoint.state_dict`` API (``full_state_dict``, ``cpu_offload``,
``ignore_frozen_params``: the frozen base is never gathered, so a LoRA checkpoint of a 6B model stays megabytes).
Loading goes the other way: every process reads the full tensors and keeps its shard. A checkpoint so written
resumes on any number of processes, with or without FSDP. The cost (documented in docs/scale-out.md): full
fine-tuning gathers every trainable tensor and its optimizer moments on one CPU (about 12 bytes a parameter).

Every function that gathers is a collective: all processes call it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from glmtune.methods.sharding import is_sharded, whole_tensors_fit

OPTIMIZER_LAYOUT = "names"  # a sharded checkpoint's optimizer state: keyed by parameter name, not position


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a sharded ``model``, whole, keyed as in ``model.state_dict()``: on the main process
    (on CPU); an empty dict on the others. A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with whole tensors, keyed by parameter name: on the main process; empty elsewhere.
    A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Put a name-keyed, whole optimizer state (:func:`optimizer_state`; every process passes it) back: each
    process keeps its shard. Works on an unsharded model too (a sharded run resumed on one process)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def main_decides(accelerator: Any, value: Any) -> Any:
    """The main process's ``value`` on every process (one small broadcast when there are several): decisions
    that end the loop (early stopping, the time budget's guard) must be the same everywhere, or the processes
    that go on wait forever in the next collective."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


__all__ = [
    "OPTIMIZER_LAYOUT",
    "is_sharded",
    "load_optimizer_state",
    "main_decides",
    "optimizer_state",
    "trainable_state",
    "whole_tensors_fit",
]
