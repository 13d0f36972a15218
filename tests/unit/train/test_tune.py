"""`glmtune tune`: the search space is checked against the config, trials are run folders, pruning stops poor
trials from their intermediate validation metrics, and best.yaml re-runs the best trial."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from glmtune.cli import main
from glmtune.core import config
from glmtune.train import search
from tests.helpers import REPO, tiny_config


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def validation_log(run: Path, metric: str) -> dict[int, float]:
    """The validation ``metric`` at each evaluation step, read from a run's log.jsonl."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r[metric] for r in rows if r.get("split") == "validation" and metric in r}


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"train.lrr": {"low": 1e-5, "high": 1e-3}},
            "unknown config key 'train.lrr'; did you mean 'train.lr'?",
        ),
        ({"train.lr": {"low": 1e-3, "high": 1e-5}}, "low 0.001 >= high 1e-05"),
        ({"train.lr": {"low": 0, "high": 1e-3, "log": True}}, "a log range needs low > 0"),
        ({"train.lr": {"low": 1e-5, "top": 1e-3}}, "expected low, high and optionally log, step"),
        ({"train.lr": "1e-3"}, "expected {low: .., high: ..} or a list of choices"),
        ({"method.name": {"low": 1, "high": 2}}, "a range needs a numeric field"),
        ({"method.lora_r": {"low": 2.5, "high": 8}}, "field 'tune.space.method.lora_r.low': got 2.5"),
        (
            {"train.warmup_ratio": {"low": 0.0, "high": 1.5}},
            "1.5 makes an invalid config: field 'train.warmup_ratio': got 1.5",
        ),
        (
            {"method.name": ["lora", "nope"]},
            "'nope' makes an invalid config: field 'method.name': got 'nope'",
        ),
        ({"train.metric": ["loss", "accuracy"]}, "the tuned metric is fixed"),
        ({}, "nothing to tune"),
    ],
)
def test_bad_spaces_are_one_line_errors(tmp_path, tiny_model_dir, sentiment_file, space, expected, capsys):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tune={"space": space})
    path = write_config(tmp_path / "tune.yaml", cfg)
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", str(path), "--out", str(tmp_path / "t")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "t").exists(), "nothing is written before the space is known to be good"


def test_bad_tune_settings_are_config_errors(tiny_model_dir, sentiment_file):
    with pytest.raises(Exception, match="tune.metric"):
        config.from_dict(tiny_config(tiny_model_dir, sentiment_file, tune={"metric": "bleu4"}))
    with pytest.raises(Exception, match="tune.sampler"):
        config.from_dict(tiny_config(tiny_model_dir, sentiment_file, tune={"sampler": "grid"}))


def test_a_seeded_sampler_proposes_the_same_trials(tmp_path, tiny_model_dir, sentiment_file):
    space = {
        "train.lr": {"low": 1e-5, "high": 1e-2, "log": True},
        "method.lora_r": [2, 4, 8],
        "train.batch_size": {"low": 4, "high": 16, "step": 4},
    }
    cfg = config.from_dict(tiny_config(tiny_model_dir, sentiment_file, tune={"space": space, "seed": 3}))
    params = search.parse_space(cfg.tune.space, "test")

    def proposals(folder: Path) -> list[dict]:
        folder.mkdir()
        study = search._study(cfg, folder, "maximize", resume=False)
        out = []
        for _ in range(12):  # past TPE's random start-up trials
            trial = study.ask()
            out.append({p.key: p.suggest(trial) for p in params})
            study.tell(trial, float(len(out) % 5))
        return out

    first, again = proposals(tmp_path / "a"), proposals(tmp_path / "b")
    assert first == again
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 12
    assert all(p["train.batch_size"] in (4, 8, 12, 16) and 1e-5 <= p["train.lr"] <= 1e-2 for p in first)


@pytest.mark.usefixtures("reset_accelerate")
def test_tune_prunes_summarises_and_best_yaml_reruns(tmp_path, tiny_model_dir, sentiment_file, capsys):
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        train={"max_steps": 3, "eval_steps": 1},
        tune={
            "metric": "loss",
            "space": {"train.lr": [1e-9, 3e-2]},
            "sampler": "random",
            "seed": 0,
            "startup_trials": 1,
        },
    )
    out = tmp_path / "tune"
    main(["tune", str(write_config(tmp_path / "cfg.yaml", cfg)), "--trials", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == str(out)

    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert [r["run"] for r in rows] == ["trial-000", "trial-001", "trial-002"]
    assert (out / "summary.md").read_text().startswith("| trial | state")
    logs = {}
    for row in rows:  # every trial is a normal, finished run folder with its sampled value
        run = out / row["run"]
        for name in ("config.yaml", "metrics.json", "predictions.jsonl", "validation_predictions.jsonl"):
            assert (run / name).is_file(), (run, name)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert "tune" not in saved and saved["train"]["metric"] == "loss"
        assert saved["train"]["lr"] == pytest.approx(float(row["train.lr"]))
        logs[int(row["trial"])] = validation_log(run, "loss")

    # Pruning, checked against the rule itself: after the first (start-up) trial, a trial stops at the first
    # evaluation whose loss is above the median of the completed earlier trials' losses at that step.
    states = {int(r["trial"]): r["state"] for r in rows}
    assert "pruned" in states.values()
    for number, log in logs.items():
        done = [logs[t] for t in range(number) if states[t] == "complete"]
        expected_stop = None
        if number >= 1:
            expected_stop = next(
                (step for step, value in sorted(log.items()) if value > np.median([d[step] for d in done])),
                None,
            )
        assert states[number] == ("pruned" if expected_stop else "complete")
        steps = json.loads((out / f"trial-{number:03d}" / "metrics.json").read_text())["steps"]
        assert steps == (expected_stop or 3), "a pruned trial stops training at the evaluation that pruned it"
        if expected_stop:
            assert f"--- trial {number}: pruned at step {expected_stop}" in printed

    # best.yaml is the best completed trial's config, and re-running it reproduces that trial.
    best = json.loads((out / "best.json").read_text())
    completed = {int(r["trial"]): float(r["validation_loss"]) for r in rows if r["state"] == "complete"}
    assert best["trial"] == min(completed, key=completed.get) and best["value"] == pytest.approx(
        min(completed.values())
    )
    best_cfg = config.load(out / "best.yaml")
    assert best_cfg.train.lr == pytest.approx(best["params"]["train.lr"])
    assert best_cfg.tune == config.TuneConfig()
    main(["train", str(out / "best.yaml"), "--output", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["validation"]["loss"] == pytest.approx(best["value"], abs=1e-6)


@pytest.mark.usefixtures("reset_accelerate")
def test_a_killed_tune_resumes(tmp_path, tiny_model_dir, sentiment_file, capsys):
    import optuna

    cfg = tiny_config(tiny_model_dir, sentiment_file, tune={"space": {"method.lora_r": [2, 4]}, "trials": 1})
    out = tmp_path / "tune"
    main(["tune", str(write_config(tmp_path / "cfg.yaml", cfg)), "--out", str(out)])
    # A tune killed while its second trial ran: the trial stays RUNNING in the study journal.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / search.STUDY))
    )
    optuna.load_study(study_name="glmtune", storage=storage).ask()
    main(["tune", "--resume", str(out), "--trials", "2"])
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "complete"), ("1", "fail"), ("2", "complete")]
    assert (out / "trial-002" / "metrics.json").is_file()
    with pytest.raises(SystemExit):
        main(["tune", str(tmp_path / "cfg.yaml"), "--out", str(out)])
    assert "tune folder exists" in capsys.readouterr().err


def test_the_example_space_is_valid():
    path = REPO / "examples" / "sentiment-tune.yaml"
    cfg = config.load(path)
    params = search.parse_space(cfg.tune.space, str(path))
    search.check_space(cfg, params, cfg.train.metric, str(path))
    assert {p.key: p.kind for p in params}["method.lora_r"] == "categorical"
    assert "tune" not in yaml.safe_load(
        config.dump(config.from_dict(search.trial_values(cfg, "accuracy", {})))
    )


@pytest.mark.usefixtures("reset_accelerate")
def test_tune_an_sft_config_by_validation_loss(tmp_path, tiny_model_dir):
    from tests.helpers import chat_rows, sft_config, write_jsonl

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    cfg = sft_config(
        tiny_model_dir,
        {"train_file": str(data)},
        tune={"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "pruner": "none"},
    )
    out = tmp_path / "tune"
    main(["tune", str(write_config(tmp_path / "cfg.yaml", cfg)), "--trials", "2", "--out", str(out)])
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    losses = {int(r["trial"]): float(r["validation_loss"]) for r in rows}
    assert json.loads((out / "best.json").read_text())["trial"] == min(losses, key=losses.get), (
        "loss is minimised"
    )
    assert config.load(out / "best.yaml").task == "sft"


@pytest.mark.usefixtures("reset_accelerate")
def test_a_trial_out_of_memory_fails_alone(tmp_path, tiny_model_dir, sentiment_file, monkeypatch):
    import torch

    from glmtune import train

    real_run, calls = train.run, []

    def first_runs_out_of_memory(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(train, "run", first_runs_out_of_memory)
    cfg = tiny_config(tiny_model_dir, sentiment_file, tune={"space": {"method.lora_r": [2, 4]}})
    out = tmp_path / "tune"
    main(["tune", str(write_config(tmp_path / "cfg.yaml", cfg)), "--trials", "2", "--out", str(out)])
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert [r["state"] for r in rows] == ["fail", "complete"]
    assert json.loads((out / "best.json").read_text())["trial"] == 1
