"""Every patch of, or private call into, another library — in one place, each with the version that needs it.

Contract: the rest of glmtune calls these functions and never touches a library's private parts itself (a test
greps for it). Each entry names the pinned version it was written against and when it can go; like trl's
``_compat.py``, "each patch should be removed when minimum version requirements eliminate the need".
Imports stay inside the functions so that importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

# --------------------------------------------------------------------------- huggingface_hub


def hub_offline() -> None:
    """No hub traffic, ever. huggingface_hub (1.x) reads ``HF_HUB_OFFLINE`` into ``constants.HF_HUB_OFFLINE`` once,
    at import: when something imported it before glmtune set the variable, the module constant is set too.
    Can go when huggingface_hub reads the variable per call (not the case in the pinned 1.x)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


# --------------------------------------------------------------------------- accelerate


def reset_accelerate_state() -> None:
    """accelerate 1.15 keeps ``AcceleratorState`` and ``GradientState`` as process-wide singletons and offers only the
    private ``_reset_state`` to clear them; several runs in one process (tuning trials, tests) need it. Can go
    when accelerate exposes a public reset."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --------------------------------------------------------------------------- peft


def set_lora_variant(layer: Any, adapter: str, variant: Any) -> None:
    """peft 0.21's extension point for LoRA variants (DoRA, aLoRA…) is the per-layer dict ``lora_variant``, which
    peft fills itself from ``LoraConfig``; a variant that is not a config option (glmtune's FusedLora) must be
    written into it. Can go if peft accepts user variants through ``LoraConfig``."""
    layer.lora_variant[adapter] = variant


# --------------------------------------------------------------------------- torch


def per_channel_qint8(int_repr: Any, scales: Any, zero_points: Any, axis: int = 0) -> Any:
    """A per-channel qint8 tensor from its saved parts. torch 2.13 has no public constructor for it (only the
    private ``torch._make_per_channel_quantized_tensor``); torch.ao.quantization is deprecated in favour of torchao,
    which glmtune does not depend on. Goes with the int8 export format's move to torchao."""
    import torch

    return torch._make_per_channel_quantized_tensor(int_repr, scales, zero_points, axis)


def quantized_weight_bias(module: Any) -> tuple[Any, Any]:
    """The weight and bias of a ``torch.ao.nn.quantized.dynamic.Linear``: torch 2.13 exposes them only through the
    private ``_weight_bias`` (``weight()`` alone loses the bias). Goes with :func:`per_channel_qint8`."""
    return module._weight_bias()


# --------------------------------------------------------------------------- bitsandbytes


def quiet_int8_cast_log() -> None:
    """bitsandbytes 0.50's LLM.int8() logs "inputs will be cast to float16" on every Linear call of every step when
    activations are not fp16; the cast is the method, not news. That one logger stays at errors. Can go when
    bitsandbytes logs it once."""
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- warnings of libraries


def filter_library_warnings() -> None:
    """Warnings a user of glmtune can do nothing about, each filtered by its exact message:

    - transformers 5.23 deprecates ``PreTrainedModel.is_gradient_checkpointing`` (FutureWarning), and peft 0.21's
      ``PeftModel.__init__`` reads it on every wrap, so every LoRA/prompt run printed it. Can go with the peft
      release that reads ``is_activation_checkpointing``.
    - peft 0.21's prompt tuning warns "Position ids are not supported for parameter efficient tuning" on every
      generation step: transformers' ``generate`` builds ``position_ids`` itself and peft drops them, correctly,
      for the virtual tokens (glmtune's own forward passes none to prompt-learning models, see
      ``models.heads``). Can go when peft stops warning on each call.
    - peft 0.21 warns "PiSSA (OLoRA) changes the base weights … should not be used with other adapters" when an
      adapter is added next to one: its own PiSSA/OLoRA → LoRA conversion at save time (which glmtune uses, see
      ``methods.variants``) adds the initial adapter that way for a moment. Can go when peft's conversion stops
      warning about itself.
    """
    warnings.filterwarnings(
        "ignore", message=r"(PiSSA|OLoRA) changes the base weights of the model", category=UserWarning
    )
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore",
        message=r"Position ids are not supported for parameter efficient tuning",
        category=UserWarning,
    )


__all__ = [
    "filter_library_warnings",
    "hub_offline",
    "per_channel_qint8",
    "quantized_weight_bias",
    "quiet_int8_cast_log",
    "reset_accelerate_state",
    "set_lora_variant",
]
