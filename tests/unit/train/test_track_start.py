"""The training bar's clock starts when training does: what runs before it (the untuned model's evaluation,
with bars of its own) is neither behind a frozen training bar nor counted in its rate and ETA."""

from __future__ import annotations

import time

from glmtune.core.runs import RunDir
from glmtune.train.track import Tracker


def test_a_deferred_bar_starts_its_clock_on_start(tmp_path, capsys):
    tracker = Tracker(RunDir(tmp_path / "run"), 4, start=False)
    tracker.write("a line before the bar")
    assert tracker._bar is None, "no training bar (frozen at 0) while the untuned model is evaluated"
    before = time.time()
    tracker.start()
    bar = tracker._bar
    assert bar is not None and bar.start_t >= before, "the rate and ETA count from here"
    tracker.start()
    assert tracker._bar is bar, "start twice: one bar"
    tracker.update(1, loss=1.0, lr=1e-3, tokens=10)
    tracker.close()
    assert "a line before the bar" in capsys.readouterr().out


def test_update_and_close_start_a_bar_never_started(tmp_path):
    tracker = Tracker(RunDir(tmp_path / "run"), 2, start=False)
    tracker.update(1, loss=1.0, lr=1e-3, tokens=10)
    assert tracker._bar.n == 1
    tracker.close()
    Tracker(RunDir(tmp_path / "other"), 2, start=False).close()  # closing a bar never shown is fine
