"""The training recipe: ``run(cfg)`` reads top to bottom in the order things happen.

data → seed → model → method → batches → optimizer → the run folder → loop (evaluate, keep best, early-stop,
checkpoint) → restore best → validation and test → metrics, predictions, plots. What a task changes
(classification, sft) lives in ``glmtune.train.tasks``; the loop (``glmtune.train.loop``) is the same for every
task. accelerate owns devices, mixed precision, gradient accumulation and DDP; checkpoints are
``glmtune.train.checkpoint``'s (safetensors and JSON, never pickles).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glmtune import methods
from glmtune.core import config as config_mod
from glmtune.core.config import Config
from glmtune.core.runs import RunDir, atomic_write_json, atomic_write_text
from glmtune.data.run_config import run_config
from glmtune.methods.speed import for_autocast
from glmtune.models.precision import AUTOCAST_DTYPES, mixed_precision
from glmtune.train import continue_from, tasks
from glmtune.train.budget import plan_budget, resume_budget
from glmtune.train.checkpoint import Found, find, load
from glmtune.train.loop import Session, TrainerState, build_optimizer, fit, total_steps
from glmtune.train.techniques import adversarial, regularize
from glmtune.train.track import Tracker


def run(
    cfg: Config,
    output: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    trust_run: bool = False,
    on_evaluate: Callable[[int, dict[str, Any]], bool] | None = None,
) -> Path:
    """Train ``cfg`` into the run folder ``output``; returns the folder. Bad input raises UserError early.

    ``on_evaluate(step, metrics)`` is called after each validation evaluation; returning True stops training
    there like early stopping (best weights restored, folder finished as usual): a pruned tuning trial.
    ``trust_run``: a resumed checkpoint of the older pickle layout may be loaded (pickles can run code).
    """
    run_dir = RunDir(output)
    checkpoint = None
    if resume:
        run_dir.check(need_weights=False)
        cfg = config_mod.load(run_dir.config)
        checkpoint = find(run_dir, trust_run=trust_run)  # verified before anything slow
    elif run_dir.path.is_dir() and any(run_dir.path.iterdir()) and not overwrite:
        run_dir.create(overwrite=False)  # raises the "not empty" error before any work is done
    task = tasks.create(cfg)
    task.resumed_run = run_dir.path if resume else None  # what a task cached there may be reused
    task.load_data()  # every bad-input error happens here, before the run folder is touched
    session = prepare(cfg, task, run_dir, overwrite=overwrite, resume=resume, checkpoint=checkpoint)
    session.on_evaluate = on_evaluate
    try:
        fit(session)
        finish(session)
    except BaseException:
        with contextlib.suppress(Exception):  # the progress bar ends before the error's line; the error stays
            session.tracker.close()
        raise
    return run_dir.path


def prepare(
    cfg: Config, task: Any, run_dir: RunDir, *, overwrite: bool, resume: bool, checkpoint: Found | None
) -> Session:
    """Seed, model, method, batches, optimizer; the time budget's plan; schedule; then the run folder and the
    resumed state."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.train), gradient_accumulation_steps=cfg.train.grad_accum
    )
    set_seed(cfg.train.seed)
    model, optimizer, params = _build(cfg, task, accelerator)
    adversary = adversarial.create(model, cfg.train.adversarial, accelerator)  # None unless fgm/pgd
    s = Session(cfg, run_dir, task, accelerator, model, optimizer, None, adversary, None, 0, TrainerState())
    header = ""
    if cfg.train.time_budget is not None and not resume:  # fixes train.max_steps; config.yaml records it
        header = plan_budget(s)
    s.steps = total_steps(s.cfg.train, len(task.loaders["train"]))
    # Not prepared by accelerate (it would step once per process); the loop steps it once per optimizer step.
    s.scheduler = regularize.make_scheduler(optimizer, s.cfg.train, s.steps)
    if accelerator.is_main_process and not resume:  # created only now that config, data and model are good
        run_dir.create(overwrite=overwrite)
        run_dir.write_marker({"task": cfg.task})
        atomic_write_text(run_dir.config, header + config_mod.dump(run_config(s.cfg)))
        task.write_start(run_dir)
    accelerator.wait_for_everyone()
    if checkpoint is not None:
        s.state = TrainerState.from_dict(load(s, checkpoint))
        resume_budget(s)
    elif resume:
        s.notes.append("no checkpoint was written yet: starting again from step 0")
    s.tracker = Tracker(
        run_dir,
        s.steps,
        enabled=accelerator.is_main_process,
        start_step=s.state.step,
        deadline=s.deadline,
        start=False,
    )
    for line in task.describe() + s.notes:
        s.tracker.write(line)
    s.tracker.write(f"{params} · {s.steps} steps · precision {accelerator.mixed_precision}")
    if task.compare_before_after and s.state.before is None and task.size("validation"):
        task.progress = "before: validation"  # the untuned model: its own bars, outside the training rate
        s.state.before = task.evaluate(model, "validation", accelerator, final=True)
        task.progress = None
    s.tracker.start()
    return s


def _build(cfg: Config, task: Any, accelerator: Any) -> tuple[torch.nn.Module, Any, str]:
    """Model and method (which parameters train is decided once, here), batches and optimizer, all prepared by
    accelerate. Returns the method's summary too."""
    model, tokenizer = task.build_model()
    params = methods.apply(model, cfg.method)
    continue_from.restore_weights(model, cfg)  # model.from_run: the earlier run's weights, not the base's
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    loaders = task.make_loaders(tokenizer, model)  # encoded once: templates, label masks, truncation
    if accelerator.mixed_precision in AUTOCAST_DTYPES:  # from here on the model only runs under autocast:
        for_autocast(model, AUTOCAST_DTYPES[accelerator.mixed_precision])  # frozen weights cast once
    optimizer = build_optimizer(model, cfg.train)
    model, optimizer, *prepared = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"]
    )
    task.loaders = dict(zip(("train", "validation", "test"), prepared))
    return model, optimizer, params


def finish(s: Session) -> None:
    """The best weights back, then every metric on validation and the held-out test set; the task's files."""
    accelerator, state = s.accelerator, s.state
    accelerator.wait_for_everyone()
    if state.best_step is not None:
        methods.restore(accelerator.unwrap_model(s.model), s.cfg.method, s.run)
    else:
        s.save_weights()
    results: dict[str, Any] = {}
    for name in ("validation", "test"):
        if s.task.size(name):
            results[name] = s.task.evaluate(s.model, name, accelerator, final=True)
    if state.before is not None and "validation" in results:
        results["before"], results["after"] = state.before, results["validation"]
    s.tracker.close()
    if s.main:
        results["best_step"] = state.best_step
        results["steps"] = state.step
        atomic_write_json(s.run.metrics, results)
        s.task.write_outputs(s.run, results)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def default_output(config_path: str | None) -> Path:
    name = Path(config_path).stem if config_path else "default"
    return Path(os.environ.get("GLMTUNE_RUNS", "runs")) / name


__all__ = ["run", "prepare", "finish", "default_output"]
