"""Continuing from a finished run (``model.from_run``, ``glmtune train CFG --from RUN``): periodic re-training.

The continued run starts from the earlier run's trained weights instead of the base model's and is otherwise an
ordinary run on the same base model: its folder holds its own complete weights (the same adapter or body tensors,
trained further, and the head), so ``eval``/``predict``/``serve``/``export`` load it as any run, without the
earlier folder. In the order ``train.run`` meets it:

* :func:`check` (the task's ``load_data``, before anything slow): the earlier folder is a finished run of the same
  task, the same base model (``name_or_path``, ``num_layers``, ``pooling``) and the same method shape (LoRA rank,
  targets and variant; prefix or prompt lengths), else one line naming the field (exit 2). Classification keeps
  the earlier label order (it becomes ``data.labels``); a label the earlier run did not have is an error (a
  head row cannot be invented), a label it had and the new data lacks stays in the head.
* :func:`replay` (``data.replay``): a seeded sample of the earlier run's training split added (``data.replay``).
* :func:`restore_weights` (``recipe._build``, after ``methods.apply``): ``methods.restore`` of the earlier
  folder's weights; every body tensor the earlier run trained must train here too (or the new run's
  ``body.safetensors`` would lose it on reload).
* :func:`write_lineage` (the task's ``write_start``): ``lineage.json``: the earlier run's path, its config.yaml's
  sha256, when it finished, its metrics, the replay and its own lineage (the chain back to the first run).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from glmtune import methods
from glmtune.core import config as config_mod
from glmtune.core.config import Config
from glmtune.core.config.model_data import REDACT_TYPES
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir, atomic_write_json, read_json

LINEAGE = "lineage.json"
SAME_MODEL = ("name_or_path", "num_layers", "pooling")
# The method fields that shape the saved weights: they must match for the earlier weights to fit.
SAME_METHOD = {
    "lora": ("lora_r", "lora_target", "lora_variant"),
    "ptuning": ("pre_seq_len", "prefix_projection"),
    "prompt_tuning": ("num_virtual_tokens",),
}


@dataclass
class Earlier:
    """The run continued from: its folder and its config (from its config.yaml)."""

    run: RunDir
    cfg: Config


def check(cfg: Config) -> Earlier | None:
    """The earlier run of ``cfg.model.from_run``, checked against ``cfg`` (module docstring); None without one.
    Classification: sets ``cfg.data.labels`` to the earlier run's labels (config.yaml records them)."""
    if cfg.model.from_run is None:
        return None
    run = RunDir(cfg.model.from_run)
    try:
        run.check(need_weights=True)
    except UserError as error:
        raise UserError(
            error.message, file=error.file, field="model.from_run", expected="a finished run"
        ) from None
    if not run.metrics.is_file():
        raise UserError(
            "the run has no metrics.json (did training finish?)",
            file=str(run.path),
            field="model.from_run",
            expected="a finished run",
        )
    earlier = Earlier(run, config_mod.load(run.config))
    _same(earlier, "task", cfg.task, earlier.cfg.task)
    for name in SAME_MODEL:
        _same(earlier, f"model.{name}", getattr(cfg.model, name), getattr(earlier.cfg.model, name))
    if cfg.method.name == "p_tuning":  # peft saves its prompt embeddings, not the encoder that trains
        raise UserError(
            "a p_tuning run keeps only its prompt embeddings, not the encoder that trains them",
            field="method.name",
            expected="lora, full, freeze, ptuning or prompt_tuning to continue from a run",
        )
    for name in ("name", *SAME_METHOD.get(cfg.method.name, ())):
        _same(earlier, f"method.{name}", getattr(cfg.method, name), getattr(earlier.cfg.method, name))
    if cfg.task == "classification":
        _keep_labels(cfg, earlier)
    return earlier


def _same(earlier: Earlier, field: str, new: Any, old: Any) -> None:
    if field == "model.name_or_path" and _same_path(new, old):
        return
    if new != old:
        raise UserError(
            f"got {new!r}, but the earlier run {earlier.run.path} has {old!r}",
            field=field,
            expected=f"{old!r} to continue from it (or a fresh run without model.from_run)",
        )


def _same_path(a: str, b: str) -> bool:
    """The same model: the same name, or two spellings of one folder."""
    return a == b or (Path(a).is_dir() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())


def _keep_labels(cfg: Config, earlier: Earlier) -> None:
    if not earlier.run.labels.is_file():
        raise UserError("the run has no labels.json", file=str(earlier.run.path), field="model.from_run")
    labels = [str(label) for label in read_json(earlier.run.labels)]
    if cfg.data.labels is not None and [label.strip() for label in cfg.data.labels] != labels:
        raise UserError(
            f"got {cfg.data.labels}, but the earlier run's labels are {labels} (its head's rows, in order)",
            field="data.labels",
            expected="unset (the earlier run's labels are kept), or the same list in the same order",
        )
    cfg.data.labels = labels


def load_classification(cfg: Config, earlier: Earlier | None) -> Any:
    """``data.load_classification``; a label the earlier run does not have is an error naming that run."""
    from glmtune.data import load_classification as load

    try:
        return load(cfg.data)
    except UserError as error:
        if earlier is None or "is not in data.labels" not in error.message:
            raise
        raise UserError(
            error.message.replace("data.labels", f"the earlier run's labels ({earlier.run.labels})"),
            file=error.file,
            line=error.line,
            field=error.field,
            expected=f"{error.expected} (a continued run keeps the earlier labels; new labels need a fresh run)",
        ) from None


def replay(cfg: Config, earlier: Earlier | None, train: list[Any], read: int, counts: Any) -> list[Any]:
    """``train`` with ``data.replay``'s share of the earlier run's training split added (``data.replay``);
    ``read``: the new training split's size as read, what the share is of."""
    from glmtune.data import replay as replay_mod

    if earlier is None or not cfg.data.replay:
        return train
    # the earlier data is scrubbed by this run's data.redact too: replay never brings back what it removes
    kinds = [k for k in REDACT_TYPES if k in {*earlier.cfg.data.redact, *cfg.data.redact}]
    source = dataclasses.replace(earlier.cfg.data, redact=kinds)
    if cfg.task == "classification":
        assert cfg.data.labels is not None  # check() set them
        items: list[Any] = replay_mod.earlier_examples(source, cfg.data.labels)
    else:
        items = replay_mod.earlier_conversations(source)
    return replay_mod.mix(train, items, cfg.data.replay, read, cfg.train.seed, counts)


def restore_weights(model: nn.Module, cfg: Config) -> None:
    """The earlier run's weights onto ``model`` (the method already applied); refused when a tensor it trained is
    frozen here (``method.trainable_layers`` below the earlier run's)."""
    if cfg.model.from_run is None:
        return
    run = RunDir(cfg.model.from_run)
    if cfg.method.name not in methods.PEFT_METHODS:
        from safetensors import safe_open

        with safe_open(str(run.body), "pt") as saved:
            lost = sorted(set(saved.keys()) - set(methods.trainable_state(model.backbone)))
        if lost:
            raise UserError(
                f"{len(lost)} tensors the earlier run trained would be frozen here (e.g. {lost[0]})",
                field="method.trainable_layers",
                expected="at least the earlier run's trainable layers",
            )
    methods.restore(model, cfg.method, run)


def describe(cfg: Config) -> list[str]:
    """The log's line about the earlier run (none without one)."""
    if cfg.model.from_run is None:
        return []
    replay = f"; data.replay {cfg.data.replay:g}" if cfg.data.replay else ""
    return [f"continuing from {cfg.model.from_run}: its weights{replay} (lineage.json)"]


def write_lineage(run: RunDir, cfg: Config, replayed: int) -> None:
    """``lineage.json`` in the new run folder (module docstring); nothing without an earlier run."""
    if cfg.model.from_run is None:
        return
    earlier = RunDir(cfg.model.from_run)
    finished = datetime.fromtimestamp(earlier.metrics.stat().st_mtime, tz=UTC)
    parent = earlier.path / LINEAGE
    record = {
        "from": str(earlier.path.resolve()),
        "task": cfg.task,
        "config_sha256": hashlib.sha256(earlier.config.read_bytes()).hexdigest(),
        "finished": finished.isoformat(timespec="seconds"),
        "metrics": read_json(earlier.metrics),
        "replay": {"fraction": cfg.data.replay, "examples": replayed},
        "lineage": read_json(parent) if parent.is_file() else None,
    }
    atomic_write_json(run.path / LINEAGE, record)


__all__ = [
    "LINEAGE",
    "Earlier",
    "check",
    "describe",
    "load_classification",
    "replay",
    "restore_weights",
    "write_lineage",
]
