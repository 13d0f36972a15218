"""A causal LM in the shape ``methods`` works on: ``backbone`` (the whole ``AutoModelForCausalLM``) and no head.

Composition, as ``SequenceClassifier``: ``methods`` may replace ``backbone`` with a peft wrapper; everything here
only calls it. Generation goes through ``backbone.generate`` (peft forwards it to the base model).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glmtune.core.config import ModelConfig

IGNORE_INDEX = -100  # labels not learned (the transformers convention; data.templates writes them)


class CausalLM(nn.Module):
    """``backbone(**batch)`` → transformers' ``CausalLMOutput``; ``head`` is None (the LM head is the model's own)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = None

    @property
    def config(self) -> Any:
        return self.backbone.config

    def forward(self, **batch: Any) -> Any:
        """The LM's output; its logits line up with ``input_ids`` (``[batch, seq, vocab]``), also under a peft soft
        prompt, whose virtual positions come first and are dropped here."""
        outputs = self.backbone(**batch)
        seq_len = batch["input_ids"].shape[1] if "input_ids" in batch else None
        # (a boolean ``logits_to_keep`` mask gives flat [kept, vocab] logits: nothing to drop)
        if seq_len is not None and outputs.logits.ndim == 3 and outputs.logits.shape[1] > seq_len:
            outputs.logits = outputs.logits[:, -seq_len:]
        return outputs

    def generate(self, **kwargs: Any) -> Any:
        return self.backbone.generate(**kwargs)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Recompute activations in backward; inputs require grad so a frozen embedding still passes gradients
        on to adapters and prefixes."""
        # transformers 5 renamed it (the old name warns); peft models and native ports may have only the old one.
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(gradient_checkpointing_kwargs)
        else:
            self.backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
            )
        enable_input_grads = getattr(self.backbone, "enable_input_require_grads", None)
        if enable_input_grads is not None:
            enable_input_grads()


def learned_mask(labels: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: the positions whose logits are learned — those followed by a learned label.

    Passed to the model as ``logits_to_keep`` (transformers' boolean form), the LM head runs on these rows only:
    prompts, padding and system turns never reach the [*, vocab] projection or its fp32 softmax."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def accepts_learned_mask(model: nn.Module) -> bool:
    """Whether ``model`` (a ``CausalLM``, possibly DDP-wrapped) honours a boolean ``logits_to_keep`` mask.

    transformers' own causal LMs do, and so does a class that declares ``boolean_logits_to_keep = True`` (glmtune's
    native models); peft's prompt-learning wrappers prepend virtual tokens (positions shift) and remote code may
    not know the boolean form, so those get full logits."""
    causal = getattr(model, "module", model)  # DDP
    backbone = getattr(causal, "backbone", None)
    if backbone is None:
        return False
    peft_config = getattr(backbone, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    own = type(base).__module__.startswith("transformers.models.")
    known = own or getattr(type(base), "boolean_logits_to_keep", False) is True
    return known and "logits_to_keep" in inspect.signature(type(base).forward).parameters


def token_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy per row and the number of learned tokens per row (``label_smoothing``:
    training only; evaluation reports the plain cross-entropy).

    ``logits`` [batch, seq, vocab] predict ``labels`` [batch, seq] shifted by one (``-100``: not learned); or,
    with ``mask`` = ``learned_mask(labels)``, ``logits`` [learned, vocab] are the model's logits at the mask's
    positions only (row-major order). Returns ``sums`` [batch] (fp32) and ``counts`` [batch].
    """
    if mask is not None:
        targets = labels.roll(-1, dims=1)[mask]  # [learned]: the label after each kept position
        losses = F.cross_entropy(
            logits.float(), targets, reduction="none", label_smoothing=label_smoothing
        )  # [learned]
        rows = mask.nonzero()[:, 0]  # [learned]: the batch row of each kept position
        sums = losses.new_zeros(labels.shape[0]).index_add(0, rows, losses)  # [batch]
        return sums, mask.sum(dim=-1)
    shifted_logits = logits[:, :-1].float()  # [batch, seq - 1, vocab]
    shifted_labels = labels[:, 1:]  # [batch, seq - 1]
    losses = F.cross_entropy(
        shifted_logits.transpose(1, 2),
        shifted_labels,
        ignore_index=IGNORE_INDEX,
        reduction="none",
        label_smoothing=label_smoothing,
    )  # [batch, seq - 1]
    return losses.sum(dim=-1), (shifted_labels != IGNORE_INDEX).sum(dim=-1)


def load_language_model(
    cfg: ModelConfig, *, dropout: float | None = None, config_overrides: dict[str, Any] | None = None
) -> tuple[CausalLM, Any]:
    """The causal LM (wrapped for ``methods``) and its tokenizer."""
    from glmtune.models.load import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, dropout=dropout, config_overrides=config_overrides)
    return CausalLM(model), tokenizer
