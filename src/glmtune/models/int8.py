"""CPU int8 weights: PyTorch dynamic quantization of every ``nn.Linear``, saved to and loaded from safetensors.

``torch.ao.quantization.quantize_dynamic`` (in torch itself, no extra dependency) stores each Linear's weight as
int8 with one scale per output channel and quantizes activations on the fly; matmuls run in int8 (fbgemm/onednn)
on x86 CPUs. Embeddings, norms and biases stay float. Activations get one scale per tensor, so a model with outlier
activation channels (small LLMs' ``down_proj`` inputs) loses quality: ``glmtune export`` measures it every time. torch marks ``torch.ao.quantization`` deprecated in favour
of torchao, which is not installed here; its warnings are silenced where it is called.

A quantized module's state is not a plain tensor (packed params), so it is written as ``NAME.weight`` (int8
``[out, in]``), ``NAME.weight_scale`` ``[out]``, ``NAME.weight_zero_point`` ``[out]`` and ``NAME.bias``; the
model is rebuilt from ``config.json`` and each Linear named in the file's metadata is replaced by a quantized one.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glmtune.core import _compat

WEIGHTS_NAME = "model.int8.safetensors"
FORMAT = "glmtune-int8-dynamic-per-channel"


@contextmanager
def _quiet():
    with warnings.catch_warnings():  # torch.ao deprecation notices, once per call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def quantize(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (fp32, CPU) by a dynamic int8 one, in place; returns ``model``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with _quiet():
        return quantize_dynamic(model.float().cpu(), {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def _quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def int8_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Plain tensors for safetensors (see the module docstring) and the names of the quantized Linears."""
    quantized = _quantized_modules(model)
    state: dict[str, torch.Tensor] = {}
    for name, module in quantized.items():
        weight, bias = _compat.quantized_weight_bias(
            module
        )  # per-channel qint8 [out, in], float [out] or None
        state[f"{name}.weight"] = weight.int_repr().contiguous()
        state[f"{name}.weight_scale"] = weight.q_per_channel_scales().float().contiguous()
        state[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().contiguous()
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().contiguous()
    prefixes = tuple(f"{name}." for name in quantized)
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.startswith(prefixes):
            state[key] = value.detach().contiguous()
    return state, sorted(quantized)


def save(model: nn.Module, folder: Path) -> None:
    """Write ``model``'s int8 weights to ``folder/model.int8.safetensors`` (the caller writes config.json)."""
    from safetensors.torch import save_file

    state, names = int8_state(model)
    # Tied tensors (embeddings shared with a float output layer) must be separate for safetensors.
    state = {k: v.clone() for k, v in state.items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT, "quantized": json.dumps(names)})


def is_int8_folder(folder: Path) -> bool:
    return (Path(folder) / WEIGHTS_NAME).is_file()


def load(folder: Path, auto_class: Any, config: Any) -> nn.Module:
    """Rebuild the model of ``config`` (``folder``'s config.json) with ``auto_class`` (``AutoModelForCausalLM`` or
    ``AutoModel``) and the int8 weights of ``folder``."""
    from safetensors import safe_open
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear
    from transformers.initialization import no_init_weights

    with safe_open(str(Path(folder) / WEIGHTS_NAME), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{folder / WEIGHTS_NAME}: not {FORMAT} weights (format {metadata.get('format')!r})")
    with no_init_weights():  # every tensor is overwritten below; buffers built in __init__ (rotary) are kept
        model = auto_class.from_config(config, dtype=torch.float32)
    names = json.loads(metadata["quantized"])
    quantized = {key for name in names for key in state if key.startswith(f"{name}.")}
    # Float tensors first, while the Linears are still float (a quantized module only loads its own keys).
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if k not in quantized}, strict=False
    )
    missing = [k for k in missing if not k.startswith(tuple(f"{name}." for name in names))]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: int8 weights do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with _quiet():
        for name in names:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            old = getattr(parent, leaf)
            new = QuantizedLinear(
                old.in_features, old.out_features, bias_=old.bias is not None, dtype=torch.qint8
            )
            weight = _compat.per_channel_qint8(
                state[f"{name}.weight"],  # int8 [out, in]
                state[f"{name}.weight_scale"].double(),  # [out]
                state[f"{name}.weight_zero_point"],  # [out]
                0,
            )
            new.set_weight_bias(weight, state.get(f"{name}.bias"))
            setattr(parent, leaf, new)
    return model.eval()
