"""How it is judged and searched: the ``eval``, ``generate`` and ``tune`` sections.

Each field's docstring is its entry in ``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glmtune.core.config.choices import METRICS, _between, _choice, _positive, _seed
from glmtune.core.errors import UserError

GENERATION_SCHEDULES = ("end", "every", "none")  # eval.generation's words (else a positive integer)


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = 32
    """Examples per batch when evaluating and predicting (validation, test, ``predict``; sft generation: replies
    generated at a time)."""

    generation: int | str = "end"
    """sft: when validation replies are generated for the generation metrics (BLEU-4, ROUGE, exact match) — the
    slow part of an evaluation on a CPU. ``end`` (the default): at the end only, on every conversation of the
    validation split before training (the untuned model, metrics.json ``before``) and after it (``after``), and
    on the whole test split; ``every``: also at each validation evaluation during training; an integer N: also at
    every N-th of them (counted from this process's start); ``none``: never (loss and perplexity only). Loss and
    perplexity come at every evaluation. A generation ``train.metric`` picks checkpoints by generated replies, so
    it generates at every evaluation (and ``none`` is an error)."""

    def __post_init__(self) -> None:
        _positive(self.batch_size, "eval.batch_size")
        if isinstance(self.generation, str) and self.generation.strip().isdigit():
            self.generation = int(self.generation)
        counted = isinstance(self.generation, int) and self.generation >= 1
        if not (counted or self.generation in GENERATION_SCHEDULES):
            raise UserError(
                f"got {self.generation!r}",
                field="eval.generation",
                expected="end, every, none or a positive integer",
            )

    def generate_every(self) -> int | None:
        """Validation evaluations during training between two that generate: 1 (``every``), N, or None (``end``,
        ``none``: none during training)."""
        if self.generation == "every":
            return 1
        return self.generation if isinstance(self.generation, int) else None


@dataclass
class GenerateConfig:
    """How an SFT model generates: for validation/test metrics, ``predict`` and ``chat`` (greedy by default)."""

    max_new_tokens: int = 128
    """sft: the reply length limit, in tokens, for validation/test metrics, ``predict`` and ``chat``."""

    do_sample: bool = False
    """Sample instead of greedy decoding."""

    temperature: float = 1.0
    """Sampling only: the softmax temperature."""

    top_p: float = 1.0
    """Sampling only: nucleus sampling's probability mass, in (0, 1]; 1 turns it off."""

    top_k: int = 0
    """Sampling only: sample among the k most likely tokens; 0 turns it off."""

    repetition_penalty: float = 1.0
    """Penalty on the scores of tokens already in the text (transformers' ``repetition_penalty``); 1: none."""

    seed: int | None = None
    """The sampling seed; unset: the current random state."""

    def __post_init__(self) -> None:
        _positive(self.max_new_tokens, "generate.max_new_tokens")
        _positive(self.temperature, "generate.temperature")
        _positive(self.repetition_penalty, "generate.repetition_penalty")
        _positive(self.top_k, "generate.top_k", allow_zero=True)
        _between(self.top_p, "generate.top_p", 0, 1, low_open=True)
        _seed(self.seed, "generate.seed", bits=64)


@dataclass
class TuneConfig:
    """Hyper-parameter search (``glmtune tune``; ``glmtune train`` ignores this section). See docs/recipes.md, "Hyper-parameter search"."""

    metric: str | None = None
    """The validation metric a trial is scored by (and selects its checkpoints by); minimised for ``loss`` and
    ``perplexity``, else maximised. Unset: ``train.metric``."""

    trials: int = 20
    """How many trials in all; ``--trials`` overrides."""

    space: Any = field(default_factory=dict)
    """The search space: any dotted config key → ``{low, high, log, step}`` (int and float fields) or a list of
    choices, e.g. ``{train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}, method.lora_r: [4, 8, 16]}``; every key,
    bound and choice is checked to make a valid config before anything runs."""

    sampler: str = "tpe"
    """``tpe`` (Optuna's TPE, its default) or ``random``."""

    seed: int = 0
    """The sampler's seed: the same config and seed propose the same trials."""

    pruner: str = "median"
    """``median``: stop a trial whose validation metric is worse than the median of finished trials at the same
    step; ``none``: never stop a trial early."""

    startup_trials: int = 2
    """Trials that always run to the end before the pruner may stop one."""

    warmup_steps: int = 0
    """Optimizer steps before a trial may be pruned."""

    def __post_init__(self) -> None:
        if self.metric is not None:
            _choice(self.metric, METRICS, "tune.metric")
        _positive(self.trials, "tune.trials")
        _choice(self.sampler, ("tpe", "random"), "tune.sampler")
        _choice(self.pruner, ("median", "none"), "tune.pruner")
        _positive(self.startup_trials, "tune.startup_trials", allow_zero=True)
        _positive(self.warmup_steps, "tune.warmup_steps", allow_zero=True)
        _seed(self.seed, "tune.seed")
        if not isinstance(self.space, dict):
            raise UserError(
                f"got {self.space!r}", field="tune.space", expected="a mapping of config keys to ranges"
            )
