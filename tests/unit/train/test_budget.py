"""train.time_budget's arithmetic: durations, the loop's evaluation count, the plan and the deadline (no timing)."""

from __future__ import annotations

import pytest

from glmtune.core.config.method_train import TrainConfig, parse_duration
from glmtune.core.errors import UserError
from glmtune.train.budget import Costs, Deadline, evaluations, plan_steps


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("12m", 720), ("1h30m", 5400), ("2.5m", 150), ("45", 45), (" 1H 5S ", 3605)],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text, "train.time_budget") == seconds


@pytest.mark.parametrize("text", ["abc", "0s", "12x", "-3m", "m", "5m tomorrow", ""])
def test_bad_durations_name_the_field(text):
    with pytest.raises(UserError, match="train.time_budget"):
        TrainConfig(time_budget=text)


def test_a_bare_yaml_number_is_seconds():
    assert TrainConfig(time_budget=90).time_budget_seconds == 90


def loop_evaluations(steps: int, eval_every: int, steps_per_epoch: int) -> int:
    """The loop's rule, written out as the loop runs it: step by step."""
    count = 0
    for step in range(1, steps + 1):
        epoch_done = step % steps_per_epoch == 0
        count += step % eval_every == 0 or step == steps or epoch_done
    return count


@pytest.mark.parametrize("steps", [1, 7, 10, 23, 100])
@pytest.mark.parametrize(("eval_every", "per_epoch"), [(10, 10), (3, 10), (50, 20), (1, 1)])
def test_evaluation_count_follows_the_loop(steps, eval_every, per_epoch):
    assert evaluations(steps, eval_every, per_epoch) == loop_evaluations(steps, eval_every, per_epoch)


def test_the_plan_is_the_largest_number_of_steps_that_fits():
    costs = Costs(step=2.0, evaluation=10.0, final=30.0, calibration=5.0)
    steps = plan_steps(300.0, costs, eval_every=10, steps_per_epoch=1000, max_steps=10_000)

    def cost(n: int) -> float:
        return n * 2.0 + loop_evaluations(n, 10, 1000) * 10.0 + 30.0

    usable = 300.0 * 0.92
    assert cost(steps) <= usable < cost(steps + 1)


def test_the_plan_never_exceeds_epochs_or_max_steps():
    costs = Costs(step=0.1, evaluation=0.0, final=0.0, calibration=0.0)
    assert plan_steps(1e6, costs, eval_every=5, steps_per_epoch=5, max_steps=17) == 17


def test_no_step_fits_when_the_final_evaluation_alone_does_not():
    costs = Costs(step=1.0, evaluation=1.0, final=100.0, calibration=0.0)
    assert plan_steps(100.0, costs, eval_every=5, steps_per_epoch=5, max_steps=50) == 0


def test_the_deadline_counts_the_next_step_its_evaluation_and_the_final_one():
    t = [0.0]
    deadline = Deadline(50.0, Costs(step=5.0, evaluation=10.0, final=30.0, calibration=0.0), lambda: t[0])
    assert deadline.next_step_fits(evaluates=True)  # 5 + 10 + 30 <= 50
    t[0] = 6.0
    assert not deadline.next_step_fits(evaluates=True)  # 44 left < 45
    assert deadline.next_step_fits(evaluates=False)  # 35 needed
    t[0] = 16.0
    assert not deadline.next_step_fits(evaluates=False)
    assert deadline.seconds_left() == 34.0


def test_a_resumed_run_gets_what_is_left_of_its_budget():
    from types import SimpleNamespace

    from glmtune.train.budget import resume_budget
    from glmtune.train.loop import TrainerState

    costs = {"step": 2.0, "evaluation": 5.0, "final": 20.0, "calibration": 3.0}
    state = TrainerState(step=10, budget={"seconds": 180.0, "elapsed": 130.0, "costs": costs})
    session = SimpleNamespace(state=state, deadline=None, notes=[])
    resume_budget(session, clock=lambda: 1000.0)
    assert session.deadline.seconds_left() == 50.0 and session.deadline.costs == Costs(**costs)
    assert session.notes == ["time budget: 50 s of 180 s left"]
    unbudgeted = SimpleNamespace(state=TrainerState(step=10), deadline=None, notes=[])
    resume_budget(unbudgeted)
    assert unbudgeted.deadline is None and unbudgeted.notes == []
