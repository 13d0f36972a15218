"""The cuts themselves, in place on a plain transformers model: whole decoder layers, MLP channels, or single weights.

Contract: every structured cut leaves a model whose ``config`` describes it exactly (``num_hidden_layers``, the
per-layer lists such as ``layer_types`` subset to the kept layers, ``intermediate_size``), so
``save_pretrained`` then ``from_pretrained`` rebuilds the same model with no glmtune code. Unstructured pruning
(``torch.nn.utils.prune``) only zeroes weights: the tensors keep their shapes, so dense speed and file size are
unchanged. Which layers or channels go is decided elsewhere (``importance``); this module takes indices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from glmtune.core.errors import UserError
from glmtune.models.anatomy import transformer_layers

# MLP layouts whose channels can be cut: (gate, up, down) projections, or one fused gate|up projection (ChatGLM3:
# ``dense_h_to_4h`` holds the gate rows then the up rows) and its down projection.
SPLIT_MLP = ("gate_proj", "up_proj", "down_proj")
FUSED_MLP = ("dense_h_to_4h", "dense_4h_to_h")


def num_layers(model: nn.Module) -> int:
    return len(transformer_layers(model)[1])


def read_num_layers(folder: Path) -> int:
    """The decoder layers of a saved model folder, from its config.json (ChatGLM3 names them ``num_layers``)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return int(config.get("num_hidden_layers", config.get("num_layers", 0)))


def drop_layers(model: nn.Module, remove: list[int]) -> None:
    """Remove the decoder layers at indices ``remove`` (of the current stack); renumber the rest and the config."""
    _, layers = transformer_layers(model)
    total = len(layers)
    keep = [i for i in range(total) if i not in set(remove)]
    if not keep or len(keep) + len(set(remove)) != total:
        raise UserError(
            f"cannot remove layers {sorted(remove)} of {total}", expected="keep at least one layer"
        )
    kept = [layers[i] for i in keep]
    for new_index, layer in enumerate(kept):
        # The KV cache is indexed by each attention's ``layer_idx``: it must follow the layer's new position.
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    while len(layers):
        del layers[len(layers) - 1]
    layers.extend(kept)
    config = model.config
    for key, value in list(vars(config).items()):
        # Per-layer settings (Gemma3/Qwen3 ``layer_types``: sliding or full attention) follow their layer.
        if isinstance(value, list) and len(value) == total and key != "architectures":
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)  # ChatGLM3 maps it to num_layers


@dataclass
class MlpParts:
    """One layer's MLP: the Linear(s) making the intermediate channels and the one reading them."""

    up: list[nn.Linear]  # each [intermediate, hidden] (fused: [2 · intermediate, hidden], gate rows first)
    down: nn.Linear  # [hidden, intermediate]
    fused: bool


def mlp_parts(layer: nn.Module) -> MlpParts:
    """The MLP of a decoder layer, by the projection names of the supported layouts (SPLIT_MLP, FUSED_MLP)."""
    names = dict(layer.named_modules())
    for prefix in {name.rsplit(".", 1)[0] for name in names if "." in name} | {""}:
        at = f"{prefix}." if prefix else ""
        if all(f"{at}{n}" in names for n in SPLIT_MLP):
            gate, up, down = (names[f"{at}{n}"] for n in SPLIT_MLP)
            return MlpParts([gate, up], down, fused=False)
        if all(f"{at}{n}" in names for n in FUSED_MLP):
            return MlpParts([names[f"{at}{FUSED_MLP[0]}"]], names[f"{at}{FUSED_MLP[1]}"], fused=True)
    raise UserError(
        "this model's MLP layout is not supported for channel pruning",
        field="--mlp-sparsity",
        expected=f"an MLP with {'/'.join(SPLIT_MLP)} or {'/'.join(FUSED_MLP)} projections",
    )


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    out.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return out


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise AssertionError(f"module not found under {type(root).__name__}")  # pragma: no cover


def shrink_mlp(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep, in layer ``i``, only the intermediate channels ``keep[i]`` (sorted indices; the same count in every
    layer, so one ``config.intermediate_size`` describes the model)."""
    _, layers = transformer_layers(model)
    sizes = {len(k) for k in keep}
    if len(keep) != len(layers) or len(sizes) != 1:
        raise ValueError("one index list per layer, all of one length")
    for layer, channels in zip(layers, keep):
        parts = mlp_parts(layer)
        channels = channels.sort().values
        inter = parts.down.in_features
        for proj in parts.up:
            rows = (
                torch.cat([channels, channels + inter]) if parts.fused else channels
            )  # fused: gate|up halves
            bias = proj.bias[rows] if proj.bias is not None else None
            _replace(layer, proj, _linear(proj.weight[rows], bias))  # [kept (·2), hidden]
        down = parts.down
        _replace(layer, down, _linear(down.weight[:, channels], down.bias))  # [hidden, kept]
        mlp = next((m for m in layer.modules() if hasattr(m, "intermediate_size")), None)
        if mlp is not None and isinstance(mlp.intermediate_size, int):
            mlp.intermediate_size = len(channels)
    model.config.intermediate_size = sizes.pop()  # ChatGLM3 maps it to ffn_hidden_size


def layer_linears(model: nn.Module) -> list[nn.Linear]:
    """Every Linear inside the decoder layers (not the embeddings, the LM output layer or a classification head)."""
    _, layers = transformer_layers(model)
    return [m for m in layers.modules() if isinstance(m, nn.Linear)]


def unstructured(model: nn.Module, amount: float) -> int:
    """Zero the ``amount`` smallest-magnitude weights of every decoder-layer Linear (``l1_unstructured``: exactly
    ``round(amount · numel)`` per tensor), made permanent (no mask left behind). Returns the weights zeroed."""
    from torch.nn.utils import prune

    zeroed = 0
    for linear in layer_linears(model):
        prune.l1_unstructured(linear, name="weight", amount=amount)
        prune.remove(linear, "weight")
        zeroed += round(amount * linear.weight.numel())
    return zeroed


__all__ = [
    "MlpParts",
    "drop_layers",
    "layer_linears",
    "mlp_parts",
    "num_layers",
    "read_num_layers",
    "shrink_mlp",
    "unstructured",
]
