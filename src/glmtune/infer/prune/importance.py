"""What to cut, measured on calibration batches (the run's validation split): layer and MLP-channel importance.

- Block Influence (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
  Expect", arXiv:2403.03853): ``BI_i = 1 − mean_t cos(x_i,t, x_i+1,t)``, the cosine distance between the hidden
  state entering decoder layer ``i`` and the one leaving it, averaged over every real (non-padding) token. A layer
  that barely turns its input has a low BI; ShortGPT removes the lowest-BI layers.
- MLP channel importance: ``I_j = mean_t |a_t,j| · ‖W_down[:, j]‖₂``, the mean magnitude of intermediate channel
  ``j`` (the down projection's input) times the norm of the column that writes it back: the channel's average
  contribution to the layer's output (the activation × weight score of Wanda, Sun et al. 2023, per channel).

Contract: ``forward`` is any callable that runs the model on one batch (the hooks see every decoder layer);
nothing here changes the model. Both scores come from the same single pass (``measure``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from glmtune.infer.prune.surgery import mlp_parts
from glmtune.models.anatomy import transformer_layers


@dataclass
class Importance:
    block_influence: list[float]  # one per decoder layer
    channels: list[torch.Tensor] | None  # per layer [intermediate] (None: not asked for)
    tokens: int  # real tokens the scores average over


def _hidden(value: Any) -> torch.Tensor:
    """A decoder layer's hidden states from its input args or its output (a tensor, or a tuple led by it)."""
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def measure(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    forward: Callable[[dict[str, torch.Tensor]], Any],
    *,
    channels: bool = False,
) -> Importance:
    """Block Influence of every decoder layer of ``model`` (and, with ``channels``, every MLP channel's importance),
    over the real tokens (``attention_mask`` 1) of ``batches``; ``forward(batch)`` runs the model that holds it."""
    _, layers = transformer_layers(model)
    n = len(layers)
    cos_sum = torch.zeros(n, dtype=torch.float64)
    act_sum: list[torch.Tensor | None] = [None] * n
    mask: dict[str, torch.Tensor] = {}

    def _real(hidden: torch.Tensor) -> torch.Tensor:
        """The real tokens' rows of ``hidden`` [batch, seq, dim] → [tokens, dim] (fp32)."""
        return hidden.float()[mask["m"].to(hidden.device)]

    def layer_hook(i: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x_in = _hidden(args[0] if args else kwargs["hidden_states"])  # [batch, seq, hidden]
            x_out = _hidden(output)  # [batch, seq, hidden]
            cos_sum[i] += torch.cosine_similarity(_real(x_in), _real(x_out), dim=-1).double().sum().cpu()

        return hook

    def down_hook(i: int):
        def hook(_module: nn.Module, args: tuple) -> None:
            a = _real(args[0]).abs().sum(0).double().cpu()  # [intermediate]
            act_sum[i] = a if act_sum[i] is None else act_sum[i] + a

        return hook

    handles = [layer.register_forward_hook(layer_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    downs = [mlp_parts(layer).down for layer in layers] if channels else []
    handles += [down.register_forward_pre_hook(down_hook(i)) for i, down in enumerate(downs)]
    tokens = 0
    try:
        for batch in batches:
            mask["m"] = batch["attention_mask"].bool()  # [batch, seq]
            tokens += int(mask["m"].sum())
            forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("no calibration tokens")
    block_influence = [float(1 - c / tokens) for c in cos_sum]
    scores = None
    if channels:
        scores = [
            (a / tokens).float() * down.weight.detach().float().norm(dim=0).cpu()  # [intermediate]
            for a, down in zip(act_sum, downs)
        ]
    return Importance(block_influence, scores, tokens)


def least_influential(block_influence: list[float], count: int) -> list[int]:
    """The ``count`` layers with the lowest Block Influence (ties: the later layer first), in layer order."""
    order = sorted(range(len(block_influence)), key=lambda i: (block_influence[i], -i))
    return sorted(order[:count])


def top_channels(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Per layer, the indices of its ``keep`` most important channels (sorted)."""
    return [s.topk(keep).indices.sort().values for s in scores]


__all__ = ["Importance", "least_influential", "measure", "top_channels"]
