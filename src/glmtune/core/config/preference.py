"""Preference tuning: the ``preference`` section (``task: preference``; the losses are
``train.techniques.preference``).

Each field's docstring is its entry in ``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

from dataclasses import dataclass

from glmtune.core.config.choices import PREFERENCE_LOSSES, _between, _choice, _positive
from glmtune.core.errors import UserError

REFERENCES = ("auto", "adapter_off", "precomputed")
REFERENCE_FREE = ("orpo", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}  # each paper's usual value


@dataclass
class PreferenceConfig:
    """Preference tuning (``task: preference``): which loss, its strength, and the reference model."""

    loss: str = "dpo"
    """``dpo`` (sigmoid; Rafailov et al. 2023), ``ipo`` (Azar et al. 2023), ``orpo`` (Hong et al. 2024, no
    reference model), ``simpo`` (Meng et al. 2024, no reference model, length-normalised) or ``kto`` (Ethayarajh et
    al. 2024, unpaired examples with a desirable/undesirable label; pairs are split into one of each)."""

    beta: float | None = None
    """The loss's β: how far the policy may move from the reference (dpo, kto), IPO's τ, ORPO's λ (weight of the
    odds-ratio term), SimPO's reward scale. Unset: the usual value of each paper (0.1; SimPO 2.0)."""

    label_smoothing: float = 0.0
    """dpo, simpo: the assumed share of flipped preference labels ε in [0, 0.5) (conservative DPO: the target of
    the pair's binary cross-entropy is 1 − ε)."""

    simpo_gamma: float = 0.5
    """simpo: the target reward margin γ (the paper's γ/β ratio of about 0.5 with β 2.0 means γ ≈ 1)."""

    desirable_weight: float = 1.0
    """kto: the weight λ_D of desirable examples' losses (raise it when desirable examples are scarcer)."""

    undesirable_weight: float = 1.0
    """kto: the weight λ_U of undesirable examples' losses."""

    reference: str = "auto"
    """Where the reference model's log-probabilities come from (dpo, ipo, kto): ``auto`` — LoRA and prompt methods:
    the same weights with the adapter switched off (no second copy in memory); full/freeze: ``precomputed``;
    ``adapter_off`` — require the former (a peft method); ``precomputed`` — computed once before training (batched)
    and cached in the run folder (``reference_logps.safetensors``), reused on resume. Must stay ``auto`` for the
    reference-free losses (orpo, simpo)."""

    def __post_init__(self) -> None:
        _choice(self.loss, PREFERENCE_LOSSES, "preference.loss")
        _choice(self.reference, REFERENCES, "preference.reference")
        _positive(self.beta, "preference.beta")
        _between(self.label_smoothing, "preference.label_smoothing", 0.0, 0.5, high_open=True)
        _positive(self.simpo_gamma, "preference.simpo_gamma", allow_zero=True)
        _positive(self.desirable_weight, "preference.desirable_weight")
        _positive(self.undesirable_weight, "preference.undesirable_weight")
        if self.loss in REFERENCE_FREE and self.reference != "auto":
            raise UserError(
                f"loss {self.loss} has no reference model, but preference.reference is {self.reference}",
                field="preference.reference",
                expected="auto (or a loss with a reference: dpo, ipo, kto)",
            )
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise UserError(
                f"label smoothing is for dpo and simpo (got loss {self.loss})",
                field="preference.label_smoothing",
                expected="0 for this loss",
            )

    @property
    def strength(self) -> float:
        """β: the set value, or the loss's usual one."""
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss]


__all__ = ["DEFAULT_BETA", "REFERENCES", "REFERENCE_FREE", "PreferenceConfig"]
