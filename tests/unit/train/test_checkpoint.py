"""Checkpoints as data: the JSON + safetensors encoding, random states, the manifest and choosing a checkpoint;
OS errors and non-finite numbers as one line; the tracker's trim on resume. No training here (tests/smoke/
test_faults.py resumes real runs)."""

from __future__ import annotations

import errno
import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glmtune.core.errors import UserError, from_os_error, os_errors_are_user_errors
from glmtune.core.runs import RunDir, atomic_write_json
from glmtune.train import checkpoint
from glmtune.train.statefiles import load_packed, pack, rng_state, save_packed, save_tensors, set_rng_state
from glmtune.train.track import Tracker, read_log

# Every file of a one-process checkpoint but the random state (whose damage is only a warning).
CHECKPOINT_FILES = [
    "model.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "accelerator.json",
    "trainer_state.json",
    "manifest.json",
]


def test_pack_round_trips_what_json_has_no_type_for(tmp_path):
    value = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 1: {"momentum_buffer": None}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "fused": True}],
        "odd": [math.nan, math.inf, -math.inf, np.float32(0.5), np.int64(7)],
        "__glmtune__": "a key that looks like a tag",
    }
    save_packed(tmp_path, "thing", value)
    text = (tmp_path / "thing.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))  # strict JSON
    back = load_packed(tmp_path, "thing")
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and list(back["state"]) == [0, 1]
    assert torch.equal(back["state"][0]["exp_avg"], value["state"][0]["exp_avg"])
    assert back["state"][0]["step"].shape == () and back["state"][1]["momentum_buffer"] is None
    assert math.isnan(back["odd"][0]) and back["odd"][1:] == [math.inf, -math.inf, 0.5, 7]
    assert back["__glmtune__"] == value["__glmtune__"]
    with pytest.raises(TypeError, match="plain data and tensors only"):
        pack({"fn": print}, {})


def test_random_states_round_trip_through_json_and_tensors(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # python keeps a cached gaussian: part of the state
    save_packed(tmp_path, "rng-0", rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_packed(tmp_path, "rng-0"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def make_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder as ``checkpoint.save`` leaves it (without a model): every file, then the manifest."""
    folder.mkdir(parents=True)
    save_tensors(folder / checkpoint.MODEL, {"w": torch.randn(4, 4)})
    save_packed(folder, "optimizer", {"state": {0: {"exp_avg": torch.randn(4, 4)}}, "param_groups": []})
    save_packed(folder, "scheduler", {"last_epoch": step})
    save_packed(folder, "accelerator", {"step": step, "scaler": None})
    save_packed(folder, "trainer_state", {"step": step})
    save_packed(folder, "rng-0", rng_state())
    checkpoint.write_manifest(folder, step=step)
    return folder


def run_with_checkpoints(tmp_path: Path, *steps: int) -> RunDir:
    run = RunDir(tmp_path / "run")
    for step in steps:
        make_checkpoint(run.checkpoints / f"step-{step:07d}", step)
    return run


def test_an_intact_checkpoint_verifies(tmp_path):
    run = run_with_checkpoints(tmp_path, 2, 4)
    found = checkpoint.find(run)
    assert found.folder.name == "step-0000004" and not found.skipped and not found.legacy
    assert checkpoint.find(RunDir(tmp_path / "empty")) is None, (
        "no checkpoint yet: the run restarts at step 0"
    )


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_file_falls_back_to_the_previous_checkpoint(tmp_path, name):
    run = run_with_checkpoints(tmp_path, 2, 4)
    path = run.checkpoints / "step-0000004" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    found = checkpoint.find(run)
    assert found.folder.name == "step-0000002"
    assert len(found.skipped) == 1 and found.skipped[0].startswith("step-0000004: ")
    assert name in found.skipped[0] or "manifest" in found.skipped[0], found.skipped


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "manifest.json").unlink(), "incomplete (no manifest.json"),
        (lambda f: (f / "scheduler.json").unlink(), "scheduler.json is missing"),
        (lambda f: (f / "model.safetensors").write_bytes(b"x" * 1000), "model.safetensors is 1000 bytes"),
        (lambda f: _flip_a_byte(f / "optimizer.safetensors"), "does not match its checksum"),
        (lambda f: _edit_manifest(f, {"../../etc/passwd": {"bytes": 1, "sha256": "0"}}), "odd file"),
        (lambda f: _edit_manifest(f, None, drop="trainer_state.json"), "lists no trainer_state.json"),
    ],
)
def test_why_a_checkpoint_is_skipped(tmp_path, damage, reason):
    run = run_with_checkpoints(tmp_path, 2, 4)
    damage(run.checkpoints / "step-0000004")
    found = checkpoint.find(run)
    assert found.folder.name == "step-0000002" and reason in found.skipped[0], found.skipped


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(folder: Path, extra: dict | None, drop: str | None = None) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"].update(extra or {})
    manifest["files"].pop(drop, None)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_no_usable_checkpoint_is_one_line(tmp_path):
    run = run_with_checkpoints(tmp_path, 2, 4)
    for step in (2, 4):
        (run.checkpoints / f"step-{step:07d}" / "trainer_state.json").write_text("{")
    with pytest.raises(UserError) as info:
        checkpoint.find(run)
    message = str(info.value)
    assert "no usable checkpoint" in message and "\n" not in message
    assert "step-0000004: trainer_state.json is" in message and "step-0000002:" in message
    assert "--overwrite" in message


class Exploit:
    """What a hostile run folder ships: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def legacy_checkpoint(folder: Path, marker: Path) -> Path:
    """The older layout: accelerate's pickles next to trainer_state.json, no manifest."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 4}))
    (folder / "model.safetensors").write_bytes(b"")
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (folder / name).write_bytes(pickle.dumps(Exploit(marker)))
    return folder


def test_a_pickled_checkpoint_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "pwned"
    run = RunDir(tmp_path / "run")
    legacy_checkpoint(run.checkpoints / "step-0000004", marker)
    with pytest.raises(UserError) as info:
        checkpoint.find(run)
    message = str(info.value)
    assert "pickles (custom_checkpoint_0.pkl, optimizer.bin, random_states_0.pkl)" in message
    assert "--trust-run" in message and "\n" not in message
    found = checkpoint.find(run, trust_run=True)
    assert found.legacy and found.folder.name == "step-0000004"
    assert not marker.exists(), "choosing a checkpoint never unpickles"


def test_an_intact_checkpoint_wins_over_a_newer_pickled_one(tmp_path):
    run = run_with_checkpoints(tmp_path, 2)
    legacy_checkpoint(run.checkpoints / "step-0000004", tmp_path / "pwned")
    found = checkpoint.find(run)
    assert found.folder.name == "step-0000002" and "older layout with pickles" in found.skipped[0]


# --------------------------------------------------------------------------- one line for OS errors


@pytest.mark.parametrize(
    "error, words",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/out/x"), "/out/x: no space left"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"), "no space left"),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "no space left"),
        (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "no space"),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), "/ro: read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied", "/p"), "/p: permission denied"),
    ],
)
def test_os_failures_become_one_line(error, words):
    with pytest.raises(UserError) as info, os_errors_are_user_errors("/out"):
        raise error
    assert words in str(info.value) and "\n" not in str(info.value)


def test_other_errors_keep_their_traceback():
    assert from_os_error(RuntimeError("shape mismatch")) is None
    assert from_os_error(OSError(errno.EIO, "I/O error")) is None
    with pytest.raises(KeyError), os_errors_are_user_errors():
        raise KeyError("a bug")


# --------------------------------------------------------------------------- metrics.json, log.jsonl


def test_metrics_json_is_always_valid_json(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"validation": {"loss": math.inf, "accuracy": 0.5}, "test": [math.nan, 1.0]})
    metrics = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert metrics["validation"] == {"loss": None, "accuracy": 0.5} and metrics["test"] == [None, 1.0]
    assert metrics["non_finite"] == ["validation.loss", "test[0]"]


def test_a_resume_from_step_zero_trims_the_whole_log(tmp_path):
    """A run killed before its first checkpoint restarts at 0: its logged steps must not stay twice."""
    run = RunDir(tmp_path / "run")
    with Tracker(run, 6) as tracker:
        for step in (1, 2):
            tracker.log(step, "train", loss=1.0)
    with Tracker(run, 6, start_step=0) as tracker:
        assert read_log(run.log) == []
        for step in (1, 2, 3):
            tracker.log(step, "train", loss=1.0)
    assert [row["step"] for row in read_log(run.log)] == [1, 2, 3]
