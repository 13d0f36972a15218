"""Sequence classification on a causal LM: the transformer body, a pooled token, a small fp32 linear head.

Composition, not inheritance: ``SequenceClassifier`` holds ``backbone`` (an ``AutoModel`` body: no LM head,
so no 262k-vocab logits are computed) and ``head`` (``nn.Linear``). ``methods`` may replace ``backbone`` with a
peft wrapper; everything here only calls it. ``labels.json`` belongs to the caller (the run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from glmtune.core.config import ModelConfig
from glmtune.core.errors import UserError
from glmtune.core.runs import atomic_path

POOLINGS = ("last", "mean")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row; right or left padding alike. ``[batch, seq]`` → ``[batch]``."""
    seq_len = attention_mask.shape[-1]
    positions = torch.arange(seq_len, device=attention_mask.device)  # [seq]
    real = torch.where(attention_mask.bool(), positions, -1)  # [batch, seq]: position, or -1 on padding
    return real.max(dim=-1).values.clamp(min=0)  # [batch]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One fp32 vector per row: the last real token, or the mean over real tokens. → ``[batch, hidden]``."""
    batch, seq_len, _ = hidden.shape  # hidden: [batch, seq, hidden]
    if attention_mask is None:
        attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=hidden.device)  # [batch, seq]
    if pooling == "last":
        rows = torch.arange(batch, device=hidden.device)  # [batch]
        return hidden[rows, last_token_index(attention_mask)].float()  # [batch, hidden]
    if pooling == "mean":
        real = attention_mask.bool().unsqueeze(-1)  # [batch, seq, 1]
        # masked_fill, not multiply: a padded position may hold NaN (fully masked attention row).
        summed = hidden.float().masked_fill(~real, 0.0).sum(dim=1)  # [batch, hidden]
        count = real.sum(dim=1).clamp(min=1)  # [batch, 1]
        return summed / count  # [batch, hidden]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def is_prompt_learning(module: nn.Module) -> bool:
    """A peft soft prompt / P-tuning wrapper: it prepends virtual tokens and ignores position ids (with a warning)."""
    config = getattr(module, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded row sees the positions an unpadded one does."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # [batch, seq]


class SequenceClassifier(nn.Module):
    """``backbone`` (transformer body) → pooled token → dropout → ``head`` (fp32 linear) → logits."""

    def __init__(self, backbone: nn.Module, num_labels: int, *, pooling: str = "last", dropout: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.backbone = backbone
        self.pooling = pooling
        hidden_size = self.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels, dtype=torch.float32)
        # Zero init: the first loss is exactly ln(num_labels) whatever the body. Pooled vectors of real
        # models are large (Gemma 3: norm ~200), so even std 0.02 starts at logits of ±3 and a loss of ~3;
        # the head's first step then moves off zero along the gradient and the body follows.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self) -> Any:
        """The backbone's config (peft and other tools look for ``model.config``)."""
        return self.backbone.config

    @property
    def hidden_size(self) -> int:
        config = self.backbone.config
        config = getattr(config, "text_config", None) or config
        return int(config.hidden_size)

    @property
    def num_labels(self) -> int:
        return self.head.out_features

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids``/``attention_mask`` ``[batch, seq]`` → logits ``[batch, num_labels]`` in fp32."""
        kwargs: dict[str, Any] = {"use_cache": False}
        if attention_mask is not None and not is_prompt_learning(self.backbone):
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)  # [batch, seq]
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = getattr(outputs, "last_hidden_state", None)  # [batch, seq, hidden]
        if hidden is None:  # a model that only returns hidden_states (output_hidden_states=True)
            hidden = outputs.hidden_states[-1]  # [batch, seq, hidden]
        hidden = hidden[:, -input_ids.shape[1] :]  # peft soft prompts come first: keep the input's positions
        pooled = self.dropout(pool(hidden, attention_mask, self.pooling))  # [batch, hidden], fp32
        # The head computes in fp32 even under bf16 autocast: the loss sees unrounded logits.
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            weight, bias = self.head.weight.float(), self.head.bias.float()  # [labels, hidden], [labels]
            return nn.functional.linear(pooled, weight, bias)  # [batch, num_labels]

    # ---- passthroughs used by train.py / methods.py
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Recompute the backbone's activations in backward (less memory, ~30% more compute)."""
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(gradient_checkpointing_kwargs)
        else:
            self.backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
            )

    def gradient_checkpointing_disable(self) -> None:
        disable = getattr(self.backbone, "activation_checkpointing_disable", None)
        if disable is not None:
            disable()
        else:
            self.backbone.gradient_checkpointing_disable()

    # ---- the head's weights (labels.json is the caller's)
    def save_head(self, path: str | Path) -> None:
        """Write the head as safetensors (``weight``, ``bias``, fp32), atomically."""
        from safetensors.torch import save_file

        state = {k: v.detach().float().contiguous().cpu() for k, v in self.head.state_dict().items()}
        metadata = {
            "pooling": self.pooling,
            "hidden_size": str(self.hidden_size),
            "num_labels": str(self.num_labels),
        }
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=metadata)

    def load_head(self, path: str | Path) -> None:
        """Load a head written by :meth:`save_head`; a head of another shape or pooling is refused."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError("classification head not found", file=str(path), expected="head.safetensors")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        expected = {k: tuple(v.shape) for k, v in self.head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            raise UserError(
                f"head has shapes {found}",
                file=str(path),
                expected=f"{expected} (same base model and number of labels)",
            )
        if metadata.get("pooling", self.pooling) != self.pooling:
            raise UserError(
                f"head was trained with pooling '{metadata['pooling']}'",
                file=str(path),
                field="model.pooling",
                expected=metadata["pooling"],
            )
        with torch.no_grad():
            self.head.weight.copy_(state["weight"])
            self.head.bias.copy_(state["bias"])


def load_classifier(
    cfg: ModelConfig,
    num_labels: int,
    dropout: float | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[SequenceClassifier, Any]:
    """A fresh classifier on ``cfg``'s body (dropout, when given, overrides the body's and is the head's).

    ``config_overrides`` are settings the body must be built with (``methods.config_overrides``: P-tuning's prefix).
    """
    from glmtune.models.load import check_model_folder, load_backbone, load_tokenizer

    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    check_model_folder(cfg)  # every folder mistake (weights included) before any loading starts
    tokenizer = load_tokenizer(cfg)
    backbone = load_backbone(cfg, dropout=dropout, config_overrides=config_overrides)
    classifier = SequenceClassifier(backbone, num_labels, pooling=cfg.pooling, dropout=dropout or 0.0)
    return classifier, tokenizer
