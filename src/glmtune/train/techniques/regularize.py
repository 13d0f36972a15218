"""Regularisation and schedules, each one line in ``train``: R-Drop, layer-wise lr decay, lr schedules.

(Dropout override is ``train.dropout``, applied at load time by ``models.load.override_dropout`` and the head;
label smoothing is ``F.cross_entropy(label_smoothing=...)`` in the tasks' training loss; weight decay and
warm-up are ``build_optimizer`` and the schedule's.)

* R-Drop — Liang et al. 2021, "R-Drop: Regularized Dropout for Neural Networks" (NeurIPS): two forward passes
  with different dropout masks, cross-entropy on both, plus ``alpha`` times the symmetric KL between their
  predicted distributions. Only meaningful where dropout is on (``train.dropout``, ``method.lora_dropout``).
* Layer-wise learning-rate decay (LLRD; Howard & Ruder 2018 "discriminative fine-tuning", Clark et al. 2020
  ELECTRA): transformer layer ``i`` of ``L`` (0 at the bottom) trains at ``lr · decay^(L-1-i)``, the input
  embeddings at ``lr · decay^L``; everything else in the body (final norm, prefix encoder) at ``lr``; the
  classification head at ``train.head_lr`` (or ``lr``).
* Schedules: ``transformers.get_scheduler`` — linear, cosine, constant, polynomial (``scheduler_power``, decays
  to 0) and cosine_with_restarts (``scheduler_cycles``), each after ``warmup_ratio`` of the steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glmtune.core.config import TrainConfig


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """R-Drop's term: ``(KL(p_a || p_b) + KL(p_b || p_a)) / 2``, summed over classes, mean over the batch.

    ``logits_a``/``logits_b`` [batch, classes] (fp32) → a scalar.
    """
    logp_a = F.log_softmax(logits_a.float(), dim=-1)  # [batch, classes]
    logp_b = F.log_softmax(logits_b.float(), dim=-1)  # [batch, classes]
    kl_ab = F.kl_div(logp_b, logp_a, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = F.kl_div(logp_a, logp_b, log_target=True, reduction="batchmean")  # KL(p_b || p_a)
    return (kl_ab + kl_ba) / 2


def rdrop_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor, alpha: float, smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of the two passes plus ``alpha`` × their symmetric KL (Liang et al. 2021, eq. 3, with
    the cross-entropy halved so ``alpha = 0`` is the ordinary loss)."""
    ce = (
        F.cross_entropy(logits_a.float(), labels, label_smoothing=smoothing)
        + F.cross_entropy(logits_b.float(), labels, label_smoothing=smoothing)
    ) / 2
    return ce + alpha * symmetric_kl(logits_a, logits_b)


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """LLRD multipliers of ``model``'s parameters by name (``{}`` when ``decay`` is 1: every scale is 1)."""
    if decay == 1.0:
        return {}
    from glmtune.models.anatomy import input_embeddings, transformer_layers

    prefix, layers = transformer_layers(model)
    depth_of_embeddings = len(layers)
    embedding_params = {id(p) for p in input_embeddings(model).parameters()}
    scales = {}
    for name, param in model.named_parameters():
        if name.startswith(prefix + "."):
            index = int(name[len(prefix) + 1 :].split(".", 1)[0])
            scales[name] = decay ** (len(layers) - 1 - index)
        elif id(param) in embedding_params:
            scales[name] = decay**depth_of_embeddings
    return scales


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps: int) -> Any:
    """The lr schedule of ``train.scheduler`` over ``steps`` optimizer steps, after ``warmup_ratio`` of them."""
    from transformers import get_scheduler

    kwargs: dict[str, Any] = {}
    if train.scheduler == "polynomial":
        kwargs = {"power": train.scheduler_power, "lr_end": 0.0}
    elif train.scheduler == "cosine_with_restarts":
        kwargs = {"num_cycles": train.scheduler_cycles}
    return get_scheduler(
        train.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(train.warmup_ratio * steps),
        num_training_steps=steps,
        scheduler_specific_kwargs=kwargs,
    )


__all__ = ["layer_lr_scales", "make_scheduler", "rdrop_loss", "symmetric_kl"]
