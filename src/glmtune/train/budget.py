"""``train.time_budget``: how many optimizer steps fit, decided once, and a guard that keeps the run in time.

Contract: :func:`calibrate` times what a run is made of on this machine — a few forward/backward passes (their
gradients are discarded and every random state is restored, so the run that follows is exactly the one its
config.yaml describes with ``max_steps``), one validation evaluation as the loop runs it, one checkpoint, and
the final evaluation (estimated from a timed one and the splits' sizes). :func:`plan_steps` is pure: the largest
number of optimizer steps whose training, evaluations and checkpoints fit the time left. :class:`Deadline`
is the guard the loop asks after each step; it only trips when the calibration was wrong (a busier machine),
and then ends training early rather than late. The clock is injected, so tests never sleep or time.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glmtune.train import checkpoint
from glmtune.train.techniques import adversarial

Clock = Callable[[], float]


def now() -> float:
    """The budget's clock (monotonic seconds); tests replace it with a fake one."""
    return time.monotonic()


WARMUP_BATCHES = 1  # the first pass allocates and warms caches: timed apart, not used for the rate
TIMED_BATCHES = 3  # passes whose time per padded token sets the step cost
SAFETY = 0.92  # plan for this share of the time left: timings vary by a few percent from step to step


@dataclass
class Costs:
    """Seconds that the parts of a run take on this machine (from :func:`calibrate`)."""

    step: float  # one optimizer step (grad_accum micro-batches of the epoch's mean padded size)
    evaluation: float  # one validation evaluation during training, with the checkpoint saved next to it
    final: float  # the final evaluation: validation and test with every metric
    calibration: float  # what calibrating itself took (already spent when planning)

    def describe(self) -> str:
        return (
            f"{self.step:.2f} s/step, {self.evaluation:.1f} s per evaluation, {self.final:.1f} s final "
            f"evaluation (calibrated in {self.calibration:.0f} s)"
        )


def evaluations(steps: int, eval_every: int, steps_per_epoch: int) -> int:
    """How many validation evaluations the loop runs in ``steps`` optimizer steps (its own rule: every
    ``eval_every`` steps, at each epoch's end and at the last step)."""
    return sum(
        1 for s in range(1, steps + 1) if s % eval_every == 0 or s % steps_per_epoch == 0 or s == steps
    )


def plan_steps(
    seconds_left: float, costs: Costs, *, eval_every: int, steps_per_epoch: int, max_steps: int
) -> int:
    """The most optimizer steps (at most ``max_steps``) whose steps, evaluations and final evaluation fit
    ``SAFETY × seconds_left``; 0 when not even one step does."""

    def cost(n: int) -> float:
        return n * costs.step + evaluations(n, eval_every, steps_per_epoch) * costs.evaluation + costs.final

    usable = SAFETY * seconds_left
    low, high = 0, max_steps  # cost() grows with n: bisect for the largest n with cost(n) <= usable
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= usable else (low, mid - 1)
    return low


class Deadline:
    """The run's end in clock time, and whether one more step (and its evaluation) still fits before the final
    evaluation must start."""

    def __init__(self, seconds: float, costs: Costs, clock: Clock | None = None) -> None:
        self.clock, self.costs = clock or now, costs
        self.end = self.clock() + seconds

    def seconds_left(self) -> float:
        return self.end - self.clock()

    def next_step_fits(self, evaluates: bool) -> bool:
        need = self.costs.step + (self.costs.evaluation if evaluates else 0.0) + self.costs.final
        return self.seconds_left() >= need


# --------------------------------------------------------------------------- the recipe's two calls


def plan_budget(s: Any, clock: Clock | None = None) -> str:
    """Calibrate, fix ``train.max_steps`` in ``s.cfg`` (the budget itself is dropped: the config now says exactly
    what runs) and arm the deadline. All processes take the smallest plan. Returns config.yaml's header line."""
    import dataclasses

    from glmtune.core.errors import UserError
    from glmtune.train.loop import total_steps

    clock = clock or now
    train, accelerator = s.cfg.train, s.accelerator
    budget_seconds, started = train.time_budget_seconds, clock()
    costs, s.state.before = calibrate(s, clock)
    batches = len(s.task.loaders["train"])
    steps_per_epoch = max(1, -(-batches // train.grad_accum))
    eval_every = train.eval_steps or batches // train.grad_accum or 1
    seconds_left = budget_seconds - (clock() - started)
    steps = plan_steps(
        seconds_left,
        costs,
        eval_every=eval_every,
        steps_per_epoch=steps_per_epoch,
        max_steps=total_steps(train, batches),
    )
    steps = int(accelerator.gather(torch.tensor([steps], device=accelerator.device)).min())
    if steps == 0:
        raise UserError(
            f"{train.time_budget} leaves no time to train: {costs.describe()}",
            field="train.time_budget",
            expected="a longer budget, or a smaller validation/test split",
        )
    s.cfg = dataclasses.replace(s.cfg, train=dataclasses.replace(train, max_steps=steps, time_budget=None))
    s.state.budget = {"seconds": budget_seconds, "elapsed": 0.0, "costs": dataclasses.asdict(costs)}
    s.deadline = Deadline(seconds_left, costs, clock)
    plan = f"train.time_budget {train.time_budget}: {costs.describe()} → {steps} optimizer steps"
    s.notes.append(plan)
    return f"# {plan}; re-running this file repeats the run without the budget.\n"


def resume_budget(s: Any, clock: Clock | None = None) -> None:
    """A resumed budgeted run: the deadline is what the first run(s) left of the budget."""
    budget, clock = s.state.budget, clock or now
    if budget is not None:
        s.deadline = Deadline(budget["seconds"] - budget["elapsed"], Costs(**budget["costs"]), clock)
        s.notes.append(f"time budget: {s.deadline.seconds_left():.0f} s of {budget['seconds']:.0f} s left")


# --------------------------------------------------------------------------- calibration


def calibrate(session: Any, clock: Clock | None = None) -> tuple[Costs, dict[str, Any] | None]:
    """Time the parts of ``session``'s run. Returns the costs and, for tasks that compare before and after,
    the untuned model's final validation metrics (timed as the final-evaluation sample, so not run twice)."""
    clock = clock or now
    start = clock()
    first, mean_tokens = _first_batches(session.task.loaders["train"], WARMUP_BATCHES + TIMED_BATCHES)
    with _random_state_kept():
        per_token = _seconds_per_padded_token(session, first, clock)
    step = per_token * mean_tokens * session.cfg.train.grad_accum
    evaluation, final, before = _evaluation_costs(session, clock)
    evaluation += _checkpoint_seconds(session, clock)
    return Costs(step, evaluation, final, clock() - start), before


def _first_batches(loader: Any, count: int) -> tuple[list[dict[str, Any]], float]:
    """The first ``count`` batches of epoch 0 (repeated if the split is smaller) and the epoch's mean padded
    micro-batch size: lengths vary with length grouping, so the first few alone would mislead. The loader is
    run to its end (collation only), so no half-read iterator is left behind."""
    loader.set_epoch(0)
    first, sizes = [], []
    for batch in loader:
        sizes.append(batch["input_ids"].numel())
        if len(first) < count:
            first.append(batch)
    first = [first[i % len(first)] for i in range(count)]
    return first, sum(sizes) / len(sizes)


def _seconds_per_padded_token(s: Any, batches: list[dict[str, Any]], clock: Clock) -> float:
    """Forward/backward passes over ``batches``; the gradients are thrown away, the model is not changed."""
    timed_seconds, timed_tokens = 0.0, 0
    s.model.train()
    for i, batch in enumerate(batches):
        began = clock()
        loss_fn = lambda batch=batch: s.task.loss(s.model, batch, s.accelerator)  # noqa: E731
        adversarial.forward_backward(loss_fn, s.accelerator, s.adversary)
        s.optimizer.zero_grad(set_to_none=True)
        if i >= WARMUP_BATCHES:
            timed_seconds += clock() - began
            timed_tokens += batch["input_ids"].numel()
    return timed_seconds / max(timed_tokens, 1)


def _evaluation_costs(s: Any, clock: Clock) -> tuple[float, float, dict[str, Any] | None]:
    """(one evaluation as the loop runs it, the final evaluation, the untuned model's final metrics or None)."""
    task, accelerator = s.task, s.accelerator
    if not task.size("validation"):  # no evaluations during training; the final one covers the test split
        began = clock()
        if task.size("test"):
            task.evaluate(s.model, "test", accelerator, final=True)
        return 0.0, clock() - began, None
    began = clock()
    task.evaluate(s.model, "validation", accelerator)
    during = clock() - began
    before = None
    final_validation = during
    if task.compare_before_after:  # the final metrics (SFT: with generation) differ from the loop's
        began = clock()
        before = task.evaluate(s.model, "validation", accelerator, final=True)
        final_validation = clock() - began
    scale = _scale(task, "validation") + (_scale(task, "test") if task.size("test") else 0.0)
    return during, final_validation * scale, before


def _scale(task: Any, split: str) -> float:
    """Work of a split's final evaluation relative to validation's (the task knows best; else its size)."""
    if hasattr(task, "eval_scale"):
        return float(task.eval_scale(split))
    return task.size(split) / max(task.size("validation"), 1)


def _checkpoint_seconds(s: Any, clock: Clock) -> float:
    """One checkpoint of what trains (saved with each evaluation by default), written to a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="glmtune-calibrate-") as scratch:
        began = clock()
        checkpoint.write(s, Path(scratch))
        return clock() - began


class _random_state_kept:
    """Dropout in the calibration passes draws random numbers: put every generator back as it was."""

    def __enter__(self) -> None:
        self.python, self.numpy, self.torch = random.getstate(), np.random.get_state(), torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __exit__(self, *_exc: object) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


__all__ = ["Costs", "Deadline", "calibrate", "evaluations", "plan_budget", "plan_steps", "resume_budget"]
