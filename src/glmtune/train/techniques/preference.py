"""Preference losses (``task: preference``): DPO, IPO, ORPO, SimPO and KTO over sequence log-probabilities.

Every function here is pure tensor arithmetic over per-sequence log-probabilities (a sum over the response's
tokens, ``sequence_logps``) and token counts; the model, the reference and the batches are the task's
(``train.tasks.preference``). Each returns ``Losses``: the scalar loss of the batch and the per-example rewards the
validation metrics are made of (detached). Rewards follow TRL's definitions, so the numbers read the same as a TRL
log: β·(policy − reference) log-ratio for the reference losses, β·(mean token log-prob) for the reference-free ones.
Parity with TRL 1.16 (losses, rewards, gradients at fp32) is tested in ``tests/unit/train/test_preference_losses.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from glmtune.models.causal import token_losses

LOSSES = ("dpo", "ipo", "orpo", "simpo", "kto")
REFERENCE_FREE = ("orpo", "simpo")  # no reference model: its settings are refused (core.config.preference)


class Losses(NamedTuple):
    """A batch's loss (scalar, with grad) and its rewards (detached): ``chosen`` [n_chosen], ``rejected``
    [n_rejected] (paired losses: n_chosen = n_rejected = pairs)."""

    loss: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of every row's learned tokens (``labels`` != -100) [rows] (fp32), and how many
    there are [rows]. ``logits`` [rows, seq, vocab], or [learned, vocab] with ``mask`` (``models.causal``)."""
    sums, counts = token_losses(logits, labels, 0.0, mask)  # [rows] summed NLL, [rows]
    return -sums, counts


def dpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> Losses:
    """DPO, the sigmoid loss: −log σ(β·Δ), Δ = (π_c − ref_c) − (π_r − ref_r) (Rafailov et al. 2023, "Direct
    Preference Optimization: Your Language Model is Secretly a Reward Model", Eq. 7). ``label_smoothing`` ε > 0 is
    conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): the binary cross-entropy of β·Δ
    against the soft target 1 − ε, −(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ). All inputs [pairs]."""
    chosen_ratio = chosen - ref_chosen  # [pairs]
    rejected_ratio = rejected - ref_rejected  # [pairs]
    losses = _smoothed(beta * (chosen_ratio - rejected_ratio), label_smoothing)  # [pairs]
    return Losses(losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def _smoothed(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1−ε)·log σ(x) − ε·log σ(−x) [pairs]: the binary cross-entropy of ``logits`` against the target 1 − ε."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> Losses:
    """IPO: (Δ̄ − 1/(2τ))², τ = ``beta`` (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
    from Human Preferences", Eq. 17), with each log-ratio divided by its response's token count (Δ̄), as the
    paper's experiments and TRL do. All inputs [pairs]."""
    chosen_ratio = chosen - ref_chosen  # [pairs]
    rejected_ratio = rejected - ref_rejected  # [pairs]
    delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(
        min=1
    )  # [pairs]
    losses = (delta - 1 / (2 * beta)) ** 2
    return Losses(losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> Losses:
    """SimPO, reference-free: −log σ(β·(mean log p_c − mean log p_r) − γ), the length-normalised reward with a
    target margin γ (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    Eq. 6); ``label_smoothing`` as in ``dpo``. All inputs [pairs]."""
    chosen_mean = chosen / chosen_tokens.clamp(min=1)  # [pairs]
    rejected_mean = rejected / rejected_tokens.clamp(min=1)  # [pairs]
    losses = _smoothed(beta * (chosen_mean - rejected_mean) - gamma, label_smoothing)  # [pairs]
    return Losses(losses.mean(), beta * chosen_mean.detach(), beta * rejected_mean.detach())


def orpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> Losses:
    """ORPO, reference-free: the chosen response's NLL (token mean over the batch's chosen tokens) minus
    β·log σ(log odds(c) − log odds(r)), odds(y) = P(y|x)/(1 − P(y|x)) on the mean token log-probability
    (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", Eqs. 2–7; β is the
    paper's λ). The NLL covers the response only (the paper's L_SFT of y given x); TRL's ORPOTrainer also scores
    the prompt's tokens there. All inputs [pairs]."""
    nll = -chosen.sum() / chosen_tokens.sum().clamp(min=1)  # scalar: token mean over the chosen responses
    chosen_mean = chosen / chosen_tokens.clamp(min=1)  # [pairs]
    rejected_mean = rejected / rejected_tokens.clamp(min=1)  # [pairs]
    # log odds(y) = log p − log(1 − p), with log(1 − p) = log(−expm1(log p)) computed stably
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))  # [pairs]
    loss = nll - beta * F.logsigmoid(log_odds).mean()
    return Losses(loss, beta * chosen_mean.detach(), beta * rejected_mean.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def kto(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Losses:
    """KTO, unpaired: a desirable response's loss is λ_D·(1 − σ(β·(r − z))), an undesirable one's
    λ_U·(1 − σ(β·(z − r))), r = π − ref, z = the batch's KL estimate max(0, mean(π − ref) over mismatched
    prompt/response pairs), not differentiated (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect
    Theoretic Optimization", Eq. 7). ``logps``, ``ref_logps``, ``desirable`` (bool) [examples];
    ``kl_logps``, ``ref_kl_logps`` [examples] (the mismatched pairs)."""
    z = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)  # scalar
    ratio = logps - ref_logps  # [examples]
    good, bad = ratio[desirable], ratio[~desirable]  # [n_desirable], [n_undesirable]
    losses = torch.cat(
        (
            desirable_weight * (1 - torch.sigmoid(beta * (good - z))),
            undesirable_weight * (1 - torch.sigmoid(beta * (z - bad))),
        )
    )  # [examples]
    return Losses(losses.mean(), beta * good.detach(), beta * bad.detach())


def metrics(
    losses: Losses, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, paired: bool = True
) -> dict[str, float]:
    """A batch's (or split's) validation metrics from its rewards and log-probabilities: ``reward_accuracy``
    (paired: the share of pairs whose chosen reward is above the rejected one; KTO: the share of examples whose
    reward has the label's sign), ``reward_margin`` (mean chosen − mean rejected reward), the mean rewards and
    log-probabilities of each side."""
    chosen, rejected = losses.chosen.float(), losses.rejected.float()
    if paired:
        accuracy = (chosen > rejected).float().mean()
    else:
        accuracy = torch.cat((chosen > 0, rejected < 0)).float().mean()
    mean = lambda t: t.float().mean().item() if t.numel() else float("nan")  # noqa: E731
    return {
        "loss": losses.loss.item(),
        "reward_accuracy": accuracy.item(),
        "reward_margin": mean(chosen) - mean(rejected),
        "chosen_reward": mean(chosen),
        "rejected_reward": mean(rejected),
        "chosen_logps": mean(chosen_logps),
        "rejected_logps": mean(rejected_logps),
    }


__all__ = [
    "LOSSES",
    "REFERENCE_FREE",
    "Losses",
    "dpo",
    "ipo",
    "kto",
    "metrics",
    "orpo",
    "sequence_logps",
    "simpo",
]
