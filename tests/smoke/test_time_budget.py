"""train.time_budget end to end on the tiny model, with a fake clock (each reading advances it): the plan fixes
max_steps once, config.yaml re-runs the same run without the budget, the guard ends a run that runs late,
and a budget too short to train is one clear line before anything is written."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import assert_nothing_written, run_cli, tiny_config, train, write_config


class FakeTime:
    """A clock that only the work moves: each training pass advances it by its padded tokens ÷ 100 seconds
    (× ``slowdown`` after the first ``on_time`` passes), each evaluation by ``evaluation`` seconds."""

    def __init__(self, monkeypatch, *, evaluation: float = 2.0, on_time: int = 10**9, slowdown: float = 1.0):
        from glmtune.train import budget
        from glmtune.train.tasks.classification import Classification

        self.t, self.passes = 0.0, 0
        monkeypatch.setattr(budget, "now", lambda: self.t)
        loss, evaluate = Classification.loss, Classification.evaluate

        def timed_loss(task, model, batch, accelerator):
            self.passes += 1
            factor = 1.0 if self.passes <= on_time else slowdown
            self.t += batch["input_ids"].numel() / 100 * factor
            return loss(task, model, batch, accelerator)

        def timed_evaluate(task, *args, **kwargs):
            self.t += evaluation
            return evaluate(task, *args, **kwargs)

        monkeypatch.setattr(Classification, "loss", timed_loss)
        monkeypatch.setattr(Classification, "evaluate", timed_evaluate)


def budget_config(model_dir, data_file, budget: str) -> dict:
    return tiny_config(
        model_dir,
        data_file,
        train={"max_steps": None, "epochs": 40, "batch_size": 8, "eval_steps": 5, "time_budget": budget},
        method={"name": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1},  # dropout draws the RNG
    )


def metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_the_budget_fixes_the_steps_and_config_yaml_repeats_the_run(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch
):
    FakeTime(monkeypatch)
    (tmp_path / "budget").mkdir()
    run = train(tmp_path / "budget", budget_config(tiny_model_dir, sentiment_file, "60s"))
    text = (run / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    planned = saved["train"]["max_steps"]
    assert text.startswith("# train.time_budget 60s:") and f"→ {planned} optimizer steps" in text
    assert saved["train"]["time_budget"] is None and 1 < planned < 40 * 4  # fewer than the 40 epochs
    first = metrics(run)
    assert first["steps"] == planned
    state = json.loads(sorted((run / "checkpoints").glob("step-*/trainer_state.json"))[-1].read_text())
    assert state["budget"]["seconds"] == 60 and state["budget"]["elapsed"] > 0

    again = tmp_path / "again"
    again.mkdir()
    from glmtune.cli import main

    main(["train", str(run / "config.yaml"), "--output", str(again / "run")])
    second = metrics(again / "run")
    assert second["steps"] == planned and second["best_step"] == first["best_step"]
    for split in ("validation", "test"):
        for key in ("accuracy", "macro_f1", "auc", "loss"):
            assert second[split][key] == pytest.approx(first[split][key], abs=1e-6), (split, key)


def test_a_run_that_falls_behind_stops_early_and_still_finishes(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch, capsys
):
    FakeTime(monkeypatch, on_time=12, slowdown=4.0)  # 4 calibration passes, 8 steps on time, then slow
    run = train(tmp_path, budget_config(tiny_model_dir, sentiment_file, "60s"))
    planned = yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"]
    result = metrics(run)
    assert result["steps"] < planned and "test" in result
    printed = capsys.readouterr()
    assert "the time budget is spent" in printed.out + printed.err


def test_a_budget_too_short_to_train_is_one_line_and_writes_nothing(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch, capsys
):
    from glmtune.cli import main

    FakeTime(monkeypatch, evaluation=15.0)  # the final evaluation alone (validation + test) needs 30 s
    cfg = write_config(tmp_path, budget_config(tiny_model_dir, sentiment_file, "20s"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(cfg), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    # Found once the model is loaded and timed (its loading bar is above): the error is the last line, alone.
    assert err.splitlines()[-1].startswith("glmtune: error: field 'train.time_budget': 20s leaves no time")
    assert "Traceback" not in err
    assert_nothing_written(tmp_path)


def test_a_malformed_budget_is_one_line(tmp_path, tiny_model_dir, sentiment_file, capsys):
    err = run_cli(tmp_path, budget_config(tiny_model_dir, sentiment_file, "ten minutes"), capsys=capsys)
    assert "train.time_budget" in err and "90s, 12m or 1h30m" in err
    assert_nothing_written(tmp_path)


def test_sft_under_a_generous_budget_trains_its_epochs_and_compares_once(
    tmp_path, tiny_model_dir, chat_file, capsys
):
    from tests.helpers import sft_config

    cfg = sft_config(
        tiny_model_dir,
        {"train_file": str(chat_file)},
        train={"max_steps": None, "epochs": 2, "time_budget": "1h"},
    )
    run = train(tmp_path, cfg)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    result = metrics(run)
    assert saved["train"]["max_steps"] == result["steps"] == 8  # 28 training conversations ÷ 8, twice
    assert "bleu4" in result["before"] and "bleu4" in result["after"]  # the calibration's timed evaluation
    printed = capsys.readouterr().out
    assert printed.count("→ 8 optimizer steps") == 1
