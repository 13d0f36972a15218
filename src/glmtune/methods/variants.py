"""LoRA variants (``method.lora_variant``), all of them peft's own: which ``LoraConfig`` options each one is, how a
variant that changes the base weights is saved so that its adapter applies to the ORIGINAL base, and LoRA+'s
choice of the tensors that train faster (``train.loraplus_lr_ratio``).

- ``dora`` (``use_dora``): a learned magnitude per output feature times the LoRA-updated direction. peft computes
  it (its ``DoraLinearVariant``); the fused LoRA path (``methods.speed.FusedLora``) leaves those layers alone.
- ``rslora`` (``use_rslora``): scale ``alpha / √r`` instead of ``alpha / r``; plain LoRA otherwise, so the fused
  path computes it exactly (it reads peft's per-layer ``scaling``).
- ``pissa`` / ``olora`` (``init_lora_weights``): A₀ and B₀ start from each weight's top-r singular vectors (an SVD)
  or from a QR decomposition, and peft replaces the base weight by the residual ``W_res = W − s·B₀A₀``, so the
  model starts exactly where the base was. Training is plain LoRA on ``W_res`` (fused path).

PiSSA and OLoRA touch the base, so their adapter alone means nothing on the untouched base. As peft recommends
(``save_pretrained(path_initial_model_for_weight_conversion=…)``, see ``LoraModel.subtract_mutated_init``), the
run's ``adapter/`` is saved converted: ``ΔW = sBA − sB₀A₀ = s'[B | −B₀][A ; A₀]``, a plain LoRA of rank 2r (alpha
doubled, so the scale is the same) on the original base: predict, serve (sharing one base with other LoRA runs),
export and plain ``PeftModel.from_pretrained`` all load it like any LoRA adapter. A₀ and B₀ are kept in memory from
:func:`remember_initial` (the init is deterministic, SVD or QR of the same weights, so a resumed run, which
initialises again before loading its checkpoint's A and B, gets the same ``W_res`` and the same A₀, B₀). The
trained A and B are the first r rows / columns of the converted tensors: :func:`trained_part` takes them back.
"""

from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glmtune.core.errors import UserError

REINIT = ("pissa", "olora")  # variants whose init changes the base weights (saved converted)

# The PiSSA/OLoRA initial adapter (A₀, B₀; peft's saved key names) of each peft model, kept for the conversion.
_INITIAL: weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()


def lora_options(variant: str) -> dict[str, Any]:
    """The ``LoraConfig`` keyword arguments of ``method.lora_variant``."""
    return {
        "none": {},
        "dora": {"use_dora": True},
        "rslora": {"use_rslora": True},
        "pissa": {"init_lora_weights": "pissa"},  # the exact SVD (not peft's randomised pissa_niter_*)
        "olora": {"init_lora_weights": "olora"},
    }[variant]


def check_base(variant: str, quantized: bool) -> None:
    """PiSSA/OLoRA rewrite the base weights from their SVD/QR: a quantized base cannot be (peft would dequantize,
    and the saved conversion would no longer match ``Quant(W)``). Refused before anything is trained."""
    if variant in REINIT and quantized:
        raise UserError(
            f"lora_variant {variant} rewrites the base weights, which a quantized model cannot hold",
            field="method.lora_variant",
            expected="none, dora or rslora with model.quantization, or quantization: none",
        )


def remember_initial(model: nn.Module, variant: str) -> None:
    """Keep a PiSSA/OLoRA peft ``model``'s initial adapter (call right after ``get_peft_model``)."""
    if variant not in REINIT:
        return
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    _INITIAL[model] = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_adapter(
    model: nn.Module, variant: str, folder: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """``model.save_pretrained(folder)``; for PiSSA/OLoRA converted to a plain LoRA on the original base.
    ``state_dict``: the model's tensors when its parameters are shards (FSDP), else None (read from it)."""
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    if variant not in REINIT:
        model.save_pretrained(str(folder), **kwargs)
        return
    initial = _INITIAL.get(model)
    if initial is None:  # only a model built by methods.apply is saved during training
        raise RuntimeError(f"no initial {variant} adapter kept for this model (methods.apply keeps it)")
    with tempfile.TemporaryDirectory(prefix="glmtune-initial-") as root:
        # peft reads the initial adapter from a folder (and writes its adapter_config.json there itself).
        path = Path(root) / "initial"
        path.mkdir()
        save_file(initial, str(path / "adapter_model.safetensors"))
        model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(path), **kwargs)


def trained_part(adapter: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """The trained A and B of a converted PiSSA/OLoRA adapter (``[A ; A₀]``: [2r, in], ``[B | −B₀]``: [out, 2r]),
    the first r rows of each A and the first r columns of each B: what the training model (on ``W_res``) takes."""
    out = {}
    for key, tensor in adapter.items():
        if "lora_A" in key:
            out[key] = tensor[:r]  # [r, in]
        elif "lora_B" in key:
            out[key] = tensor[:, :r]  # [out, r]
        else:
            out[key] = tensor
    return out


def read_adapter(folder: Path, variant: str, r: int) -> dict[str, torch.Tensor]:
    """A run's saved adapter tensors as the training model holds them (see :func:`trained_part`)."""
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    return trained_part(adapter, r) if variant in REINIT else adapter


def loraplus_b(name: str, param: torch.Tensor) -> bool:
    """LoRA+ (Hayou et al. 2024): whether a trainable adapter tensor takes ``lr × loraplus_lr_ratio``. B matrices
    (of linear and embedding adapters), and, as in peft's ``create_loraplus_optimizer`` (the authors' reference),
    the adapters' 1-d tensors (DoRA's magnitudes, LoRA biases)."""
    return "lora_B" in name or "lora_embedding_B" in name or ("lora_" in name and param.ndim == 1)


__all__ = [
    "REINIT",
    "check_base",
    "lora_options",
    "loraplus_b",
    "read_adapter",
    "remember_initial",
    "save_adapter",
    "trained_part",
]
