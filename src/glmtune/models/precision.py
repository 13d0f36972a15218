"""Which precision a run computes in: ``train.mixed_precision: auto`` resolved against the hardware.

Contract: pure decision, no side effects; the training recipe hands the answer to accelerate, the inference side
to ``torch.autocast``. Lives with the models because both sides need it and neither may import the other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from glmtune.core.config import TrainConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(train: TrainConfig) -> str:
    """``auto`` → bf16 where the hardware does it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), else fp32."""
    if train.mixed_precision != "auto":
        return train.mixed_precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "no"
