"""How it trains: the ``method`` section (with ``method.distill``) and the ``train`` section (with
``train.adversarial``).

Each field's docstring is its entry in ``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from glmtune.core.config.choices import (
    LOWER_IS_BETTER,
    METHODS,
    METRICS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    _between,
    _choice,
    _positive,
    _seed,
)
from glmtune.core.errors import UserError

# method.lora_variant: peft's LoRA variants (glmtune.methods.variants)
LORA_VARIANTS = ("none", "dora", "rslora", "pissa", "olora")


@dataclass
class DistillConfig:
    """Knowledge distillation from a finished teacher run (Hinton et al. 2015); off while ``teacher`` is unset."""

    teacher: str | None = None
    """The finished teacher's run folder (same task; sft: the same tokenizer vocabulary); unset: no distillation."""

    temperature: float = 2.0
    """Softens the teacher's and the student's distributions alike; the KL term is scaled by T²."""

    alpha: float = 0.5
    """Weight of the KL term: loss = alpha · T² · KL(teacher ‖ student) + (1 − alpha) · cross-entropy on the hard
    labels."""

    def __post_init__(self) -> None:
        _positive(self.temperature, "method.distill.temperature")
        _between(self.alpha, "method.distill.alpha", 0, 1)


@dataclass
class MethodConfig:
    """Which parameters train: all, the top layers, LoRA adapters or a P-tuning v2 prefix (the head always trains)."""

    name: str = "lora"
    """Which parameters train: ``full`` (all of them), ``freeze`` (the top layers), ``lora`` (LoRA adapters),
    ``ptuning`` (ChatGLM3's P-tuning v2 prefix), ``prompt_tuning`` or ``p_tuning`` (peft's soft prompts).
    The classification head always trains."""

    trainable_layers: int = 2
    """``freeze``: how many top transformer layers train (with the final norm)."""

    frozen_cache_gb: float = 4.0
    """``freeze``, classification: memory for keeping each training example's output of the frozen layers (fp32,
    real tokens only) after its first pass, so later epochs skip those layers (measured: epoch 2 of the demo 29%
    faster per step). 0: off; off by itself when anything in the model is random (a dropout rate, FGM/PGD);
    a resumed run starts with it empty."""

    lora_r: int = 8
    """LoRA rank."""

    lora_alpha: int = 16
    """LoRA scale numerator (scale = alpha / r)."""

    lora_dropout: float = 0.05
    """Dropout on the LoRA input (0 <= p < 1)."""

    lora_target: list[str] | str = "all-linear"
    """The modules that get adapters: a list of module names (e.g. ``[q_proj, v_proj]``) or peft's ``all-linear``;
    never an LM output layer."""

    lora_variant: str = "none"
    """``lora``: a LoRA variant, peft's own. ``dora`` (DoRA, Liu et al. 2024: a learned magnitude per output
    feature, LoRA on the direction), ``rslora`` (rank-stabilised, Kalajdzievski 2023: scale alpha/√r instead of
    alpha/r), ``pissa`` (PiSSA, Meng et al. 2024: A and B start from each weight's top-r singular vectors, the base
    keeps the rest), ``olora`` (OLoRA, Büyükakyüz 2024: A and B start from a QR decomposition of each weight);
    ``none``: plain LoRA. PiSSA and OLoRA change the base weights when training starts; their ``adapter/`` is saved
    converted to a plain LoRA of rank 2·r on the original base (peft's conversion), so it loads, merges and serves
    like any LoRA adapter. Not with a quantized model (pissa, olora)."""

    pre_seq_len: int = 128
    """``ptuning``: virtual key/value tokens given to every layer (ChatGLM3's P-tuning v2)."""

    prefix_projection: bool = False
    """``ptuning``: learn the prefix through a 2-layer MLP (more parameters)."""

    num_virtual_tokens: int = 20
    """``prompt_tuning`` / ``p_tuning`` (peft): learned virtual token embeddings put before every input."""

    distill: DistillConfig = field(default_factory=DistillConfig)
    """Knowledge distillation from a teacher run: the ``method.distill`` section."""

    def __post_init__(self) -> None:
        _choice(self.name, METHODS, "method.name")
        _positive(self.trainable_layers, "method.trainable_layers")
        _positive(self.frozen_cache_gb, "method.frozen_cache_gb", allow_zero=True)
        _positive(self.lora_r, "method.lora_r")
        _positive(self.lora_alpha, "method.lora_alpha")
        _positive(self.pre_seq_len, "method.pre_seq_len")
        _positive(self.num_virtual_tokens, "method.num_virtual_tokens")
        _between(self.lora_dropout, "method.lora_dropout", 0, 1, high_open=True)
        _choice(self.lora_variant, LORA_VARIANTS, "method.lora_variant")
        if self.lora_variant != "none" and self.name != "lora":
            raise UserError(
                f"lora_variant {self.lora_variant} needs LoRA (got method.name: {self.name})",
                field="method.lora_variant",
                expected="none, or method.name: lora",
            )


@dataclass
class AdversarialConfig:
    """Adversarial training on the input embeddings (``glmtune.train.techniques.adversarial``): FGM or PGD; off with ``none``."""

    name: str = "none"
    """An adversarial perturbation of the input embeddings: ``fgm`` (Miyato et al. 2017) or ``pgd`` (Madry et al.
    2018); ``none``: off."""

    epsilon: float = 1.0
    """L2 radius of the perturbation, per example (over all its token embeddings)."""

    alpha: float = 0.3
    """``pgd``: L2 size of each ascent step."""

    steps: int = 3
    """``pgd``: ascent steps k (the first from the clean gradient)."""

    def __post_init__(self) -> None:
        _choice(self.name, ("none", "fgm", "pgd"), "train.adversarial.name")
        _positive(self.epsilon, "train.adversarial.epsilon")
        _positive(self.alpha, "train.adversarial.alpha")
        _positive(self.steps, "train.adversarial.steps")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: float = 1.0
    """Passes over the training split; may be fractional."""

    max_steps: int | None = None
    """Optimizer steps; overrides ``epochs`` when set; 0 evaluates without training (zero-/few-shot prompts)."""

    time_budget: str | None = None
    """Wall time for the run after the model is loaded (training, its validation evaluations and the final
    evaluation), e.g. ``90s``, ``12m``, ``1h30m``. A short calibration (a few timed forward/backward passes whose
    gradients are discarded, one timed validation evaluation and checkpoint) fixes the number of optimizer steps
    once, the smaller of what fits and ``epochs``/``max_steps``; the schedule is built for that number. The run's
    config.yaml records it as ``max_steps`` (and no budget), so re-running that file repeats the run exactly."""

    batch_size: int = 16
    """Examples per micro-batch (per process)."""

    grad_accum: int = 1
    """Micro-batches per optimizer step."""

    lr: float = 2e-4
    """Learning rate of the body (adapters or unfrozen layers)."""

    head_lr: float | None = None
    """Learning rate of the classification head; unset: ``lr``."""

    loraplus_lr_ratio: float | None = None
    """LoRA+ (Hayou, Ghosh and Yu 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): LoRA's B matrices
    train at ``lr × ratio`` (the paper: 2–16; peft's reference also gives the adapters' 1-d tensors, DoRA's
    magnitudes, that rate); unset: off. ``method.name: lora`` only."""

    optimizer: str = "adamw"
    """The optimizer: AdamW, or SGD with ``momentum``."""

    momentum: float = 0.9
    """``sgd`` only: the momentum."""

    weight_decay: float = 0.01
    """Weight decay; never applied to norms, biases or other 1-d tensors."""

    scheduler: str = "linear"
    """The learning-rate schedule after warm-up (``scheduler_power``, ``scheduler_cycles`` shape the last two)."""

    warmup_ratio: float = 0.06
    """Share of the optimizer steps spent warming up (0 <= r < 1)."""

    max_grad_norm: float | None = 1.0
    """Gradient clipping: the largest gradient norm; ``null`` turns clipping off."""

    dropout: float | None = None
    """Override every dropout probability in the model's config (and the classification head's); unset: the
    model's own."""

    label_smoothing: float = 0.0
    """Training cross-entropy against (1 − ε)·one-hot + ε/classes (classification and sft; the training loss
    only)."""

    rdrop_alpha: float = 0.0
    """R-Drop: weight of the symmetric KL between two dropout passes (classification only; needs dropout); 0: off."""

    layer_lr_decay: float = 1.0
    """LLRD: layer *i* of *L* (0: the bottom) trains at ``lr·decay^(L-1-i)``, the embeddings at ``lr·decay^L``;
    1: off."""

    scheduler_power: float = 1.0
    """``polynomial`` schedule: power of the decay to 0 (1 is the linear schedule)."""

    scheduler_cycles: int = 1
    """``cosine_with_restarts``: how many cosine cycles (hard restarts) in the run."""

    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    """Adversarial training on the input embeddings: the ``train.adversarial`` section."""

    mixed_precision: str = "auto"
    """Autocast: ``auto`` (bf16 where the CPU/GPU does it natively), ``no``, ``bf16`` or ``fp16``."""

    seed: int = 42
    """The training seed: the same seed gives the same metrics."""

    max_seq_len: int = 128
    """Tokens per example; longer examples are cut (and counted in the log)."""

    group_by_length: bool = True
    """Batches of similar length: less padding, the same examples per epoch."""

    gradient_checkpointing: bool = False
    """Trade compute for memory: recompute activations in the backward pass instead of keeping them."""

    eval_steps: int | None = None
    """Validate every N optimizer steps; always at each epoch's end and at the last step."""

    save_steps: int | None = None
    """A resumable checkpoint every N optimizer steps; unset: with each evaluation."""

    save_total_limit: int = 2
    """How many checkpoints are kept."""

    log_steps: int = 10
    """A ``log.jsonl`` line every N optimizer steps."""

    metric: str | None = None
    """The validation metric that picks the best checkpoint (and stops early). Classification: ``accuracy`` (the
    default), ``macro_f1``, ``auc``, ``loss``; sft: ``loss`` (the default), ``perplexity``, or a generation metric
    (``bleu4``, ``rouge*_char``, ``rouge*_word``, ``exact_match``), which generates the whole validation split at
    each evaluation; preference: ``loss`` (the default), ``reward_accuracy``, ``reward_margin``, ``chosen_reward``,
    ``rejected_reward``, ``chosen_logps``, ``rejected_logps``. ``loss``, ``perplexity`` and the ``rejected_*`` ones
    are minimised, the others maximised."""

    patience: int | None = None
    """Early stopping: evaluations without improvement before stopping; unset: no early stopping."""

    min_delta: float = 0.0
    """The smallest change of ``metric`` that counts as an improvement."""

    def __post_init__(self) -> None:
        _positive(self.epochs, "train.epochs")
        _positive(self.max_steps, "train.max_steps", allow_zero=True)  # 0: evaluate without training
        if self.time_budget is not None:
            self.time_budget = str(self.time_budget)
            parse_duration(self.time_budget, "train.time_budget")  # checked now: a typo fails before loading
        _positive(self.batch_size, "train.batch_size")
        _positive(self.grad_accum, "train.grad_accum")
        _positive(self.lr, "train.lr")
        _positive(self.head_lr, "train.head_lr")
        _positive(self.loraplus_lr_ratio, "train.loraplus_lr_ratio")
        _positive(self.weight_decay, "train.weight_decay", allow_zero=True)
        _between(self.momentum, "train.momentum", 0, 1, high_open=True)
        _positive(self.max_grad_norm, "train.max_grad_norm")
        _positive(self.min_delta, "train.min_delta", allow_zero=True)
        _seed(self.seed, "train.seed")
        _positive(self.max_seq_len, "train.max_seq_len")
        _positive(self.eval_steps, "train.eval_steps")
        _positive(self.save_steps, "train.save_steps")
        _positive(self.log_steps, "train.log_steps")
        _positive(self.save_total_limit, "train.save_total_limit")
        _positive(self.patience, "train.patience")
        _choice(self.optimizer, OPTIMIZERS, "train.optimizer")
        _choice(self.scheduler, SCHEDULERS, "train.scheduler")
        _choice(self.mixed_precision, PRECISIONS, "train.mixed_precision")
        if self.metric is not None:
            _choice(self.metric, METRICS, "train.metric")
        _between(self.warmup_ratio, "train.warmup_ratio", 0, 1, high_open=True)
        _between(self.dropout, "train.dropout", 0, 1, high_open=True)
        _between(self.label_smoothing, "train.label_smoothing", 0, 1, high_open=True)
        _positive(self.rdrop_alpha, "train.rdrop_alpha", allow_zero=True)
        _between(self.layer_lr_decay, "train.layer_lr_decay", 0, 1, low_open=True)
        _positive(self.scheduler_power, "train.scheduler_power")
        _positive(self.scheduler_cycles, "train.scheduler_cycles")

    @property
    def greater_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget, "train.time_budget")


_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(h|m|s)")


def parse_duration(text: str, field_name: str) -> float:
    """``90s``, ``12m``, ``1h30m``, ``2.5m`` or a bare number of seconds → seconds (> 0)."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or _DURATION.sub("", value).strip():
            raise UserError(
                f"got {text!r}", field=field_name, expected="a duration such as 90s, 12m or 1h30m"
            ) from None
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if not 0 < seconds < math.inf:
        raise UserError(f"got {text!r}", field=field_name, expected="a finite duration above zero")
    return seconds
