"""Which precision a run computes in: ``train.mixed_precision: auto`` resolved against the hardware.

Contract: pure decision, no side effects; the training recipe hands the answer to accelerate, the inference side
to ``torch.autocast``. Lives with the models because both sides need it and neither may import the other.
"""

from __future__ import annotations

import torch

from glmtune.core import hardware
from glmtune.core.config import TrainConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(train: TrainConfig) -> str:
    """``auto`` → bf16 where the hardware does it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), else fp32."""
    return precision_choice(train)[0]


def precision_choice(train: TrainConfig, cpu: dict | None = None) -> tuple[str, str]:
    """``mixed_precision``'s answer and why, in words (``glmtune env`` prints it; benchmarks record it).

    ``cpu``: ``core.hardware.cpu_facts()`` of another machine (tests); default this one's.
    """
    if train.mixed_precision != "auto":
        choice = train.mixed_precision
        return choice, f"{_name(choice)}: set by train.mixed_precision={choice}"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "bf16: the GPU computes bf16 natively"
        return "fp16", "fp16: the GPU has no native bf16"
    cpu = cpu or hardware.cpu_facts()
    if not cpu["cpuinfo"]:
        return "no", "fp32: the CPU's instruction sets are unknown here (no /proc/cpuinfo)"
    native = hardware.native_bf16(cpu)
    if native:
        return "bf16", f"bf16: the CPU has {native.upper().replace('_', '-')}"
    sets = cpu["instruction_sets"]
    widest = "AVX512" if sets.get("avx512f") else "AVX2" if sets.get("avx2") else None
    only = f" ({widest} only)" if widest else ""
    return "no", f"fp32: no native bf16{only}: bf16 would be emulated"


def _name(choice: str) -> str:
    return "fp32" if choice == "no" else choice
