"""Fault injection through the real CLI: kills at named points of checkpoint writing, damaged checkpoints, a
crafted pickle, a read-only folder, a full disk, duplicate YAML keys, non-finite numbers. Each ends in a resume to
the metrics of an uninterrupted run, or in one line and exit code 2 (no traceback), before anything slow.

The kills use the test hook ``GLMTUNE_FAULT=<point>@<step>`` (``glmtune.train.checkpoint``), which SIGKILLs the
training process at that point of writing the checkpoint of that step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from glmtune.train.checkpoint import FAULT_POINTS
from tests.helpers import ENV, review, run_cli, tiny_config, train, write_jsonl
from tests.unit.train.test_checkpoint import CHECKPOINT_FILES, legacy_checkpoint

STEPS = 6  # checkpoints at 2, 4 and 6; the straight run keeps all three


def config(model_dir: Path, data: Path) -> dict:
    return tiny_config(
        model_dir,
        data,
        train={"max_steps": STEPS, "save_steps": 2, "eval_steps": 2, "save_total_limit": 3},
        method={"lora_dropout": 0.1},  # dropout draws from the RNG: a resume must restore it to match
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run: what every resumed run must end as."""
    from glmtune.cli import main
    from glmtune.train import reset_process_state

    root = tmp_path_factory.mktemp("faults")
    rng = random.Random(0)
    rows = [{"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
    cfg = config(tiny_model_dir, write_jsonl(root / "reviews.jsonl", rows))
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    reset_process_state()
    main(["train", str(path), "--output", str(root / "straight")])
    reset_process_state()
    metrics = json.loads((root / "straight" / "metrics.json").read_text())
    return SimpleNamespace(cfg=cfg, path=path, run=root / "straight", metrics=metrics)


def killed_after_step_4(straight, tmp_path: Path) -> Path:
    """What a kill just after the step-4 checkpoint leaves: no later checkpoint, no final files."""
    run = tmp_path / "killed"
    shutil.copytree(straight.run, run)
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    for name in ("metrics.json", "predictions.jsonl", "validation_predictions.jsonl"):
        (run / name).unlink()
    return run


def resume(run: Path, capsys, *extra: str) -> str:
    """``glmtune train --resume RUN`` in process; returns what it printed on stderr."""
    from glmtune.cli import main
    from glmtune.train import reset_process_state

    reset_process_state()
    capsys.readouterr()
    main(["train", "--resume", str(run), *extra])
    reset_process_state()
    return capsys.readouterr().err


def assert_same_run(straight, run: Path) -> None:
    assert json.loads((run / "metrics.json").read_text()) == straight.metrics
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [(row["step"], row["split"]) for row in rows]
    assert len(steps) == len(set(steps)), "every step logged once"
    assert [step for step, split in steps if split == "train"] == list(range(1, STEPS + 1))
    assert not list((run / "checkpoints").glob(".*")), "no half-written checkpoint left behind"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_checkpoint_file_falls_back_to_the_previous_one(straight, tmp_path, capsys, name):
    run = killed_after_step_4(straight, tmp_path)
    path = run / "checkpoints" / "step-0000004" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    err = resume(run, capsys)
    assert (
        "glmtune: warning: skipped checkpoint step-0000004: " in err and "resuming from step-0000002" in err
    )
    assert_same_run(straight, run)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_random_state_is_a_warning_never_silent(straight, tmp_path, capsys, damage):
    run = killed_after_step_4(straight, tmp_path)
    path = run / "checkpoints" / "step-0000004" / "rng-0.json"
    path.write_text("{") if damage == "truncated" else path.unlink()
    err = resume(run, capsys)
    assert "skipped checkpoint" not in err, "the weights are intact: this checkpoint is used"
    assert "random state of process 0 is unreadable" in err and "the resumed run will differ" in err
    assert json.loads((run / "metrics.json").read_text())["steps"] == STEPS


def test_no_usable_checkpoint_is_one_line(straight, tmp_path, capsys):
    from glmtune.cli import main

    run = killed_after_step_4(straight, tmp_path)
    for folder in (run / "checkpoints").iterdir():
        (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(run)])
    assert exit_info.value.code == 2
    err = one_line(capsys)
    assert "no usable checkpoint" in err and "step-0000004: model.safetensors is 0 bytes" in err


def test_a_crafted_pickle_is_refused_and_never_run(straight, tmp_path, capsys):
    from glmtune.cli import main

    run = killed_after_step_4(straight, tmp_path)
    shutil.rmtree(run / "checkpoints")
    marker = tmp_path / "pwned"
    legacy_checkpoint(run / "checkpoints" / "step-0000004", marker)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(run)])
    assert exit_info.value.code == 2
    err = one_line(capsys)
    assert "custom_checkpoint_0.pkl" in err and "can run code" in err and "--trust-run" in err
    assert not marker.exists(), "the pickle's command never ran"
    with pytest.raises(SystemExit):
        main(["train", str(straight.path), "--output", str(tmp_path / "new"), "--trust-run"])
    assert "--trust-run is for --resume" in one_line(capsys)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "can run any code they hold" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- kills while writing a checkpoint


# One point of each kind (a subprocess each, ~10 s): "weights", "optimizer", "state" and "manifest" all leave
# a hidden, incomplete .step-0000004.tmp; "rename" a complete one not yet in place; "prune" one checkpoint too many.
@pytest.mark.parametrize("point", ["optimizer", "rename", "prune"])
def test_a_kill_while_checkpointing_resumes_to_the_same_run(straight, tmp_path, capsys, point):
    assert point in FAULT_POINTS
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "glmtune.cli", "train", str(straight.path), "--output", str(run)]
    proc = subprocess.run(cmd, env={**ENV, "GLMTUNE_FAULT": f"{point}@4"}, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (run / "metrics.json").exists()
    resume(run, capsys)
    assert_same_run(straight, run)
    assert len(list((run / "checkpoints").iterdir())) == 3


def test_a_kill_in_the_first_checkpoint_restarts_with_each_step_logged_once(straight, tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "glmtune.cli", "train", str(straight.path), "--output", str(run)]
    proc = subprocess.run(cmd, env={**ENV, "GLMTUNE_FAULT": "manifest@2"}, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert 2 in logged, "the killed run had logged step 2"
    resume(run, capsys)
    assert_same_run(straight, run)


# --------------------------------------------------------------------------- the disk


@contextmanager
def tmpfs(path: Path, options: str):
    """A small tmpfs at ``path`` (root only); skips the test where it cannot be mounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fails the test if the data or the model starts loading."""
    from glmtune.train import tasks

    def refuse(*_args, **_kwargs):
        raise AssertionError("the output folder must be checked before anything slow")

    monkeypatch.setattr(tasks, "create", refuse)


@pytest.mark.usefixtures("nothing_loads")
def test_a_read_only_output_folder_is_one_line_before_loading(straight, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: a read-only file system is the real thing
        context = tmpfs(tmp_path / "ro", "ro,size=64k")
        words = "read-only file system"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        context, words = contextmanager(lambda: (yield tmp_path / "ro"))(), "permission denied"
    with context as folder:
        err = run_cli(tmp_path, straight.cfg, "--output", str(folder / "run"), capsys=capsys)
    assert f"{folder}: {words}" in err


def test_a_full_disk_is_one_line(straight, tmp_path, capsys):
    from glmtune.cli import main
    from glmtune.train import reset_process_state

    with tmpfs(tmp_path / "small", "size=64k") as folder:
        reset_process_state()
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["train", str(straight.path), "--output", str(folder / "run")])
        reset_process_state()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
        assert "no space left on the disk" in err and str(folder) in err
        assert not list((folder / "run" / "checkpoints").glob(".*")), "no half-written checkpoint"


def test_a_diverged_run_writes_valid_json(straight, tmp_path):
    """An absurd but finite lr: the losses become nan; metrics.json says so in strict JSON."""
    from glmtune.train import reset_process_state

    reset_process_state()
    run = train(tmp_path, straight.cfg, "train.lr=1e30", "train.max_grad_norm=null", "train.max_steps=2")
    reset_process_state()
    metrics = json.loads((run / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert metrics["validation"]["loss"] is None and "validation.loss" in metrics["non_finite"]


# --------------------------------------------------------------------------- the config


def test_duplicate_yaml_keys_name_the_file_line_and_key(straight, tmp_path, capsys):
    from glmtune.cli import main

    path = tmp_path / "dup.yaml"
    text = straight.path.read_text(encoding="utf-8")
    path.write_text(text + "model:\n  name_or_path: gemma3-270m\n", encoding="utf-8")
    line = len(text.splitlines()) + 1
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = one_line(capsys)
    assert f"{path}:{line}: field 'model': key given twice (first at line " in err


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=nan", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.lr=.inf", "train.lr"),
        ("train.head_lr=-.inf", "train.head_lr"),
        ("train.epochs=1e999", "train.epochs"),
        ("train.momentum=1.5", "train.momentum"),
        ("train.max_grad_norm=-1", "train.max_grad_norm"),
        ("train.batch_size=-4", "train.batch_size"),
        ("train.seed=-1", "train.seed"),
        ("train.time_budget=inf", "train.time_budget"),
        ("method.lora_dropout=nan", "method.lora_dropout"),
        ("method.distill.alpha=1.5", "method.distill.alpha"),
        ("generate.top_p=nan", "generate.top_p"),
        ("generate.temperature=inf", "generate.temperature"),
        ("data.validation_size=nan", "data.validation_size"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_one_line(straight, tmp_path, capsys, override, field):
    err = run_cli(tmp_path, straight.cfg, override, capsys=capsys)
    assert f"field '{field}'" in err
