"""Resumable checkpoints as data: safetensors and JSON only, each verified by a manifest written last.

A checkpoint ``checkpoints/step-NNNNNNN/`` holds::

    model.safetensors                       the trainable tensors (the frozen base reloads from the model)
    optimizer.json (+ optimizer.safetensors) the optimizer's param groups (lr, betas, ...) and state tensors
    scheduler.json                          the lr schedule's state_dict
    accelerator.json                        accelerate's micro-step counter (accumulation), the fp16 GradScaler
    rng-<process>.json (+ .safetensors)     each process's random state: python, numpy; torch CPU and CUDA
    trainer_state.json                      ``TrainerState``
    manifest.json                           every file above with its size and sha256, written last

Under FSDP the trainable tensors and the optimizer state are gathered whole first (``glmtune.train.sharded``;
the optimizer's then keyed by parameter name), so the files are the same whatever the number of processes.
It is written into a hidden ``.step-NNNNNNN.tmp`` folder (each process its random state, the main process the
rest), then the manifest, then renamed into place; older checkpoints are pruned after that. ``find`` picks the
newest checkpoint whose manifest verifies and says which newer ones it skipped and why; a missing or damaged
random state is a warning (the resumed run will differ), never silent. Nothing here unpickles: a checkpoint of the
older layout (accelerate's ``*.pkl``/``*.bin`` pickles, which can run code when loaded) is refused unless the
user trusts the run folder (``glmtune train --resume RUN --trust-run``); then accelerate loads it as before.

Test hook: ``GLMTUNE_FAULT=<point>[@<step>]`` SIGKILLs the process at a named point of writing (``FAULT_POINTS``;
only the checkpoint of ``step`` when given), for the fault-injection tests (tests/smoke/test_faults.py).
How values become JSON and safetensors: ``glmtune.train.statefiles``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir, prune
from glmtune.methods.sharding import whole_tensors_fit
from glmtune.train import sharded
from glmtune.train.statefiles import load_packed, rng_state, save_packed, save_tensors, set_rng_state

PREFIX = "step-"
MANIFEST = "manifest.json"
MODEL = "model.safetensors"
# Each a .json, plus a .safetensors when it holds tensors.
PACKED = ("optimizer", "scheduler", "accelerator", "trainer_state")
FORMAT = 1
FAULT_POINTS = ("weights", "optimizer", "state", "manifest", "rename", "prune")
_LEGACY_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")


@dataclass
class Found:
    """The checkpoint a resumed run starts from, and the newer ones skipped (one reason each)."""

    folder: Path
    legacy: bool = False  # the older pickle layout, loaded because the user passed --trust-run
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- writing


def save(s: Any) -> Path:
    """Checkpoint the session ``s`` (a ``loop.Session``) as ``checkpoints/step-NNNNNNN``; every process calls
    it. Kept: the newest ``train.save_total_limit``."""
    target = s.run.checkpoints / f"{PREFIX}{s.state.step:07d}"
    tmp = target.with_name(f".{target.name}.tmp")
    accelerator = s.accelerator
    if s.main:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed run's leftover of the same step
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        write(s, tmp)
        accelerator.wait_for_everyone()  # every process's random state is there
        if s.main:
            _fault("manifest", s.state.step)
            write_manifest(tmp, step=s.state.step, processes=accelerator.num_processes)
            _fault("rename", s.state.step)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            _fault("prune", s.state.step)
            for stale in target.parent.glob(f".{PREFIX}*.tmp"):  # left by a kill mid-write
                shutil.rmtree(stale, ignore_errors=True)
            older = sorted(p for p in target.parent.glob(f"{PREFIX}*") if p != target)
            prune(older + [target], s.cfg.train.save_total_limit)
    except BaseException:
        if s.main:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    accelerator.wait_for_everyone()
    return target


def write(s: Any, folder: Path) -> None:
    """Every file of a checkpoint but the manifest into ``folder``: each process its random state, the main
    process the rest. (Also timed by the time budget's calibration.)"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = s.accelerator.unwrap_model(s.model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if sharded.is_sharded(model):  # FSDP: every process joins the gathers, the main one gets whole tensors
        whole, optimizer = sharded.trainable_state(model), sharded.optimizer_state(model, s.optimizer)
        trainable = {name: whole[name] for name in names} if s.main else {}
    else:
        params = dict(model.named_parameters())
        trainable = {name: params[name].detach().contiguous() for name in names}
        optimizer = s.optimizer.state_dict()
    save_packed(folder, f"rng-{s.accelerator.process_index}", rng_state())
    if not s.main:
        return
    save_tensors(folder / MODEL, trainable)
    _fault("weights", s.state.step)
    save_packed(folder, "optimizer", optimizer)
    _fault("optimizer", s.state.step)
    if s.scheduler is not None:  # None only while the time budget's calibration times a checkpoint
        save_packed(folder, "scheduler", s.scheduler.state_dict())
    scaler = getattr(s.accelerator, "scaler", None)
    save_packed(
        folder,
        "accelerator",
        {"step": s.accelerator.step, "scaler": scaler.state_dict() if scaler is not None else None},
    )
    save_packed(folder, "trainer_state", dict(vars(s.state)))
    _fault("state", s.state.step)


def write_manifest(folder: Path, **extra: Any) -> None:
    """manifest.json: each file's size and sha256 (each flushed to disk first). Written last: its presence
    marks the checkpoint complete."""
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path, sync=True)}
    manifest = {"format": FORMAT, **extra, "files": files}
    with (folder / MANIFEST).open("w", encoding="utf-8") as out:
        out.write(json.dumps(manifest, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())


# --------------------------------------------------------------------------- choosing


def find(run: RunDir, *, trust_run: bool = False) -> Found | None:
    """The newest usable checkpoint of ``run``; None when there is none at all (the run restarts at step 0).

    Checkpoints whose manifest is missing or does not match their files are skipped (the reason is kept in
    ``Found.skipped``); when every one is unusable, one line says why. Cheap: no model is loaded."""
    folders = sorted(run.checkpoints.glob(f"{PREFIX}*"), reverse=True) if run.checkpoints.is_dir() else []
    skipped, pickled = [], []
    for folder in folders:
        legacy = _pickles(folder)
        if legacy and not (folder / MANIFEST).exists():
            if trust_run and (folder / "trainer_state.json").is_file():
                return Found(folder, legacy=True, skipped=skipped)
            pickled.append((folder, legacy))
            skipped.append(f"{folder.name}: older layout with pickles ({', '.join(legacy)}), not loaded")
            continue
        reason = verify(folder)
        if reason is None:
            return Found(folder, skipped=skipped)
        skipped.append(f"{folder.name}: {reason}")
    if not folders:
        return None
    if pickled:
        folder, legacy = pickled[0]
        raise UserError(
            f"the checkpoint holds pickles ({', '.join(legacy)}), which can run code when loaded",
            file=str(folder),
            expected="--trust-run to load them anyway (only for a run folder you trust), or --overwrite to "
            "start again",
        )
    raise UserError(
        "no usable checkpoint (" + "; ".join(skipped) + ")",
        file=str(run.checkpoints),
        expected="an intact checkpoint, or --overwrite to start again",
    )


def verify(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint; None when it is. Random states are checked when
    loaded (a damaged one is a warning, not a reason to skip)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files")
    except FileNotFoundError:
        return "incomplete (no manifest.json: killed while it was written?)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"manifest.json unreadable ({type(error).__name__})"
    missing = [name for name in (MODEL, *(f"{stem}.json" for stem in PACKED)) if name not in files]
    if missing:
        return f"manifest.json lists no {', '.join(missing)}"
    for name, meta in files.items():
        if not name.startswith("rng-"):
            problem = _check_file(folder, name, meta)
            if problem:
                return problem
    return None


def _check_file(folder: Path, name: Any, meta: Any) -> str | None:
    if not (isinstance(name, str) and Path(name).name == name and name[:1] not in ("", ".")):
        return f"manifest.json names an odd file {name!r}"
    if not isinstance(meta, dict):
        return f"manifest.json names an odd file {name!r}"
    path = folder / name
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size != meta.get("bytes"):
        return f"{name} is {size} bytes, the manifest says {meta.get('bytes')}"
    if _sha256(path) != meta.get("sha256"):
        return f"{name} does not match its checksum"
    return None


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in _LEGACY_SUFFIXES) if folder.is_dir() else []


# --------------------------------------------------------------------------- loading


def load(s: Any, found: Found) -> dict[str, Any]:
    """Restore ``found`` into the session ``s`` (every process reads); returns the ``TrainerState`` fields.
    The main process says which newer checkpoints were skipped, and why."""
    if s.main:
        for reason in found.skipped:
            _warn(f"skipped checkpoint {reason}; resuming from {found.folder.name}")
    if found.legacy:  # the user passed --trust-run: accelerate unpickles the older layout, as it always did
        s.accelerator.register_for_checkpointing(s.scheduler)
        s.accelerator.load_state(str(found.folder), strict=False)
        return json.loads((found.folder / "trainer_state.json").read_text(encoding="utf-8"))
    folder = found.folder
    try:
        from safetensors.torch import load_file

        weights = load_file(str(folder / MODEL))
        optimizer, scheduler, accelerator, state = (load_packed(folder, stem) for stem in PACKED)
        model = s.accelerator.unwrap_model(s.model)
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if set(weights) != set(params):
            raise ValueError(
                f"{len(weights)} tensors for {len(params)} trainable parameters (config edited?)"
            )
        with torch.no_grad(), whole_tensors_fit(model):  # FSDP: each process keeps its slice
            for name, param in params.items():
                param.copy_(weights[name])
        _load_optimizer(s, model, optimizer)
        s.scheduler.load_state_dict(scheduler)
    except Exception as error:  # verified files that still do not fit: one line, no traceback
        raise UserError(
            f"cannot be restored: {error}", file=str(folder), expected="--overwrite to start again"
        ) from None
    s.accelerator.step = accelerator["step"]
    scaler = getattr(s.accelerator, "scaler", None)
    if scaler is not None and accelerator.get("scaler") is not None:
        scaler.load_state_dict(accelerator["scaler"])
    _restore_rng(folder, s.accelerator.process_index)
    return state


def _load_optimizer(s: Any, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """The optimizer state back: keyed by parameter name when written under FSDP (any number of processes may
    resume it), by position otherwise (which a sharded model cannot take)."""
    by_name = any(isinstance(p, str) for group in state["param_groups"] for p in group["params"])
    if by_name:
        sharded.load_optimizer_state(model, s.optimizer, state)
    elif sharded.is_sharded(model):
        raise ValueError("written without FSDP; resume it the way it was started, or --overwrite")
    else:
        s.optimizer.load_state_dict(state)


def _restore_rng(folder: Path, process: int) -> None:
    """This process's random state back; when it is missing or damaged, a warning (never silent)."""
    stem = f"rng-{process}"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        if f"{stem}.json" not in manifest:
            raise FileNotFoundError(f"no {stem}.json (written by fewer processes?)")
        for name in (f"{stem}.json", f"{stem}.safetensors"):
            problem = _check_file(folder, name, manifest[name]) if name in manifest else None
            if problem:
                raise ValueError(problem)
        set_rng_state(load_packed(folder, stem))
    except Exception as error:
        _warn(
            f"{folder}: the random state of process {process} is unreadable ({error}); resuming without it, "
            "so the resumed run will differ from an uninterrupted one"
        )


def _warn(message: str) -> None:
    print(f"glmtune: warning: {' '.join(message.splitlines())}", file=sys.stderr, flush=True)


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fault(point: str, step: int) -> None:
    """Test hook: ``GLMTUNE_FAULT=<point>[@<step>]`` kills this process here, as a power cut or OOM-kill would."""
    wanted = os.environ.get("GLMTUNE_FAULT")
    if not wanted:
        return
    name, _, at = wanted.partition("@")
    if name == point and (not at or int(at) == step):
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAULT_POINTS", "Found", "find", "load", "save", "verify", "write"]
