"""Adversarial training on the input embeddings (``train.adversarial``): FGM and PGD.

* FGM — Miyato, Dai & Goodfellow 2017, "Adversarial Training Methods for Semi-Supervised Text Classification"
  (ICLR): one step ``r = epsilon · g / ||g||₂`` along the loss gradient ``g`` with respect to the word
  embeddings of each example; the model trains on ``L(x) + L(x + r)``.
* PGD — Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks" (ICLR): ``k`` ascent steps ``r ← Π_{||r||₂ ≤ epsilon}(r + alpha · g / ||g||₂)``, each ``g`` taken at the
  current ``x + r``; the model trains on ``L(x) + L(x + r_k)`` (as in FreeLB/"PGD" for text, Zhu et al. 2020).

How: a forward hook on the model's input-embedding module adds a perturbation ``delta`` to its *output*
(``[batch, seq, hidden]``). The embedding weights are never written, so they are bit-exactly what they were
after every step, and frozen embeddings (LoRA, freeze, P-tuning) are perturbed just the same: ``delta`` is a
leaf of its own that takes the gradient, whatever trains. Norms are per example, over all its tokens.
Mixed precision: ``delta`` has the embedding output's dtype; gradients with respect to it are only used as
directions (normalised), so a GradScaler's scale cancels. Gradient accumulation: every backward here runs
inside the loop's ``accelerator.accumulate`` and goes through ``accelerator.backward`` (same 1/accum scaling),
and the PGD ascent steps take ``torch.autograd.grad`` of ``delta`` alone (no parameter gradients) under
``accelerator.no_sync`` (a DDP model then expects no gradient reduction for them).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from glmtune.core.config import AdversarialConfig
from glmtune.core.errors import UserError
from glmtune.models.anatomy import input_embeddings

LossFn = Callable[[], tuple[torch.Tensor, int]]


def _per_example_normalise(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||₂`` per example (norm over ``[seq, hidden]``); zero where ``g`` is zero. → g's shape, fp32."""
    g = torch.nan_to_num(g.float())  # [batch, seq, hidden]
    norms = g.flatten(1).norm(dim=1).clamp(min=1e-12)  # [batch]
    return g / norms.view(-1, *([1] * (g.ndim - 1)))


def _project(r: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project each example's perturbation onto the L2 ball of radius ``epsilon``."""
    norms = r.flatten(1).norm(dim=1)  # [batch]
    scale = (epsilon / norms.clamp(min=1e-12)).clamp(max=1.0)  # [batch]
    return r * scale.view(-1, *([1] * (r.ndim - 1)))


class Adversary:
    """FGM or PGD on the embedding output; :meth:`step` replaces the loop's forward + backward of one batch.

    ``model`` is the model as the loop calls it (accelerate-prepared); its input embeddings are found on the
    unwrapped model.
    """

    def __init__(self, model: nn.Module, cfg: AdversarialConfig, accelerator: Any):
        self.cfg = cfg
        self.model = model
        self.accelerator = accelerator
        self.embedding = input_embeddings(accelerator.unwrap_model(model))
        self.base: torch.Tensor | None = None  # the perturbation the hook adds (None: zeros)
        self.active = False  # the hook adds nothing outside :meth:`step`
        self.leaf: torch.Tensor | None = None  # the added tensor when it takes a gradient (``record``)
        self.record = False
        self.handle = self.embedding.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        if self.record:  # one leaf per perturbed pass, shared by every forward in it (R-Drop runs two)
            if self.leaf is None:
                base = self.base if self.base is not None else torch.zeros_like(output)
                self.leaf = base.detach().to(output.dtype).requires_grad_(True)  # [batch, seq, hidden]
            return output + self.leaf
        if self.base is None:
            return None
        return output + self.base.to(output.dtype)  # [batch, seq, hidden]

    @contextmanager
    def _perturb(self, base: torch.Tensor | None, record: bool):
        self.active, self.base, self.record, self.leaf = True, base, record, None
        try:
            yield
        finally:
            self.active, self.base, self.record = False, None, False

    def step(self, loss_fn: LossFn) -> tuple[torch.Tensor, int]:
        """Clean loss + backward, then the adversarial loss + backward (gradients add up). Returns the clean
        loss and the batch's real tokens, like ``task.loss``."""
        accelerator = self.accelerator
        with self._perturb(None, record=True):
            loss, tokens = loss_fn()
            accelerator.backward(loss)
        if self.leaf is None:  # a silent no-op would look like adversarial training that does nothing
            raise UserError(
                "the model never called its input embeddings (get_input_embeddings())",
                field="train.adversarial.name",
                expected="none for this model",
            )
        grad = self.leaf.grad if self.leaf.grad is not None else torch.zeros_like(self.leaf)
        self.leaf = None
        direction = _per_example_normalise(grad)  # [batch, seq, hidden]
        if self.cfg.name == "fgm":
            r = self.cfg.epsilon * direction
        else:
            r = self._pgd(loss_fn, direction)
        with self._perturb(r, record=False):
            adv_loss, _ = loss_fn()
            accelerator.backward(adv_loss)
        return loss, tokens

    def _pgd(self, loss_fn: LossFn, direction: torch.Tensor) -> torch.Tensor:
        """``steps`` projected ascent steps from 0; the first direction is the clean pass's."""
        scaler = getattr(self.accelerator, "scaler", None)
        scale = scaler.get_scale() if scaler is not None else 1.0  # fp16: keep small gradients representable
        r = _project(self.cfg.alpha * direction, self.cfg.epsilon)
        for _ in range(self.cfg.steps - 1):
            with self.accelerator.no_sync(self.model), self._perturb(r, record=True):
                loss, _ = loss_fn()
                (grad,) = torch.autograd.grad(loss * scale, self.leaf)
            self.leaf = None
            r = _project(r + self.cfg.alpha * _per_example_normalise(grad), self.cfg.epsilon)
        return r

    def remove(self) -> None:
        self.handle.remove()


def create(model: nn.Module, cfg: AdversarialConfig, accelerator: Any) -> Adversary | None:
    """An :class:`Adversary` on ``model``'s input embeddings, or None when ``cfg.name`` is ``none``."""
    return None if cfg.name == "none" else Adversary(model, cfg, accelerator)


def forward_backward(
    loss_fn: LossFn, accelerator: Any, adversary: Adversary | None
) -> tuple[torch.Tensor, int]:
    """One micro-batch's forward and backward: plain, or with the adversarial term added."""
    if adversary is not None:
        return adversary.step(loss_fn)
    loss, tokens = loss_fn()
    accelerator.backward(loss)
    return loss, tokens


__all__ = ["Adversary", "create", "forward_backward"]
