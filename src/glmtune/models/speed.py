"""Make a loaded model train faster without changing what it computes.

Measured on the 2-core CPU (``benchmarks/sft_throughput.py``, README "Speed"): a LoRA step spends more time in
what surrounds the matrix products than in them. Two of those costs are avoidable:

* **Autocast re-casts frozen weights at every forward.** Under bf16 autocast, ``F.linear`` casts an fp32 weight
  to bf16 each call and caches the cast only for weights that require grad, so every frozen weight of the base
  model (LoRA, freeze, P-tuning) is converted again at every forward. :func:`cast_frozen_linears` stores those
  weights in the autocast dtype once: autocast would have cast them to exactly these values, so the products are
  bit-for-bit the same (tested). Only ``nn.Linear`` weights and biases: norms, embeddings (and LM heads tied to
  them) keep their dtype, because autocast does not cast them and the numbers would change.
* **Dropout draws one 32-bit random number per element.** peft's LoRA dropout (``nn.Dropout`` on each adapter's
  input) runs ``bernoulli_`` over every activation entering every adapted layer. :class:`FastDropout` takes the
  same Bernoulli mask from 16-bit slices of 64-bit random words (four draws per word), with ``p`` rounded to a
  multiple of 1/65536 (0.05 → 0.049988…), and scales kept values by ``1 / (1 - p)`` as ``nn.Dropout`` does.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16  # one draw: 16 random bits


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from 16-bit random draws (4 per 64-bit word) instead of ``bernoulli_``."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = round(p * _LEVELS)  # an element is dropped when its draw (0 … 65535) is below this
        self.p = self.threshold / _LEVELS  # the probability actually used
        self.scale = 1.0 / (1.0 - self.p) if self.p < 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: any shape
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        info = torch.iinfo(torch.int64)
        words = torch.randint(info.min, info.max, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        draws = words.view(torch.int16)[:n].view(x.shape)  # [*x.shape], uniform over -32768 … 32767
        kept = draws >= self.threshold - _LEVELS // 2  # P(dropped) = threshold / 65536
        # One multiply by a scaled 0/1 mask: measured faster than masked_fill or where (forward + backward).
        return x * kept.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace peft's LoRA dropout modules (``lora_dropout[adapter]``, ``nn.Dropout``) by :class:`FastDropout`.
    Returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p)
                replaced += 1
    return replaced


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights (and biases) of frozen fp32 ``nn.Linear`` layers in ``dtype``, the autocast dtype the
    model trains under. Returns how many layers were cast.

    A frozen LM head tied to frozen embeddings gets its own ``dtype`` copy of the matrix instead (the embedding
    lookup is not autocast, so the shared fp32 tensor must stay): autocast would otherwise make that copy again
    at every forward and keep it for the backward, so peak memory does not grow. Quantized layers (bitsandbytes'
    ``nn.Linear`` subclasses) and peft's adapters (trainable) are left alone.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    cast = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        if id(weight) in embeddings:  # tied: untie into a frozen copy, the embedding keeps the original
            module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        else:
            module.to(dtype)
        cast += 1
    return cast


def keep_adapter_inputs(model: nn.Module) -> int:
    """Under autocast, let peft's adapters take their input in the compute dtype (peft's documented
    ``cast_input_dtype_enabled`` switch) instead of up-casting it to the fp32 adapter weights' dtype, only for
    autocast to cast it straight back for the adapter's matrix product. The adapter's dropout then runs on the
    compute-dtype input: the same mask, kept values scaled in that dtype. Returns how many layers were set."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def for_autocast(model: nn.Module, dtype: torch.dtype) -> None:
    """Everything above that only holds under autocast in ``dtype``: call once, before training starts."""
    cast_frozen_linears(model, dtype)
    keep_adapter_inputs(model)


__all__ = ["FastDropout", "cast_frozen_linears", "for_autocast", "keep_adapter_inputs", "use_fast_dropout"]
