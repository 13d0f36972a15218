"""What the benchmarks share: the machine they ran on, child processes, and the same clock on both sides.

Every benchmark writes its results through ``write_results``, which stores beside them the machine
(``glmtune env --json``'s facts, its one-second matmul probe included) and the precision the measured code computed
in, so a figure never travels without the hardware it was measured on.

Both sides are timed from the end of their first optimizer step to the end of their last, counting only the real
(non-padding) tokens of the batches trained in between: glmtune's from its own log.jsonl, the Trainer's from a
forward pre-hook on its model (a collator-side count would include batches the data loader prefetched).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def hardware_block(probe: bool = True) -> dict[str, Any]:
    """This machine as ``glmtune env --json`` describes it, probed with glmtune's own thread count."""
    from glmtune.cli.env import collect
    from glmtune.core.hardware import apply_threads

    apply_threads()
    return collect(probe=probe)


def write_results(
    path: Path, payload: dict[str, Any], *, precision: Any, hardware: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``payload`` plus ``precision`` (what the measured code computed in: a string, or one per side) and
    ``hardware`` (default: measured now, after the benchmark, so the probe runs on a quiet machine), written
    atomically as indented JSON. Returns what was written."""
    from glmtune.core.runs import atomic_write_json

    results = {**payload, "precision": precision, "hardware": hardware or hardware_block()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
    return results


def write_and_print(
    path: Path, results: dict[str, Any], baseline: str, label: str, loss: str = "final_loss"
) -> None:
    """``write_results`` with each side's precision, then one line per side and the ratios glmtune / ``label``
    (``results`` holds ``baseline`` and ``glmtune`` side dicts, ``speedup`` and ``rss_ratio``)."""
    write_results(
        path, results, precision={kind: results[kind]["precision"] for kind in ("glmtune", baseline)}
    )
    for kind in (baseline, "glmtune"):
        r = results[kind]
        print(
            f"{kind:>8}: {r['tokens_per_s']:7.1f} real tokens/s over {r['steps']} steps · "
            f"peak RSS {r['peak_rss_mib']:7.0f} MiB · {loss.replace('_', ' ')} {r[loss]:.4f}"
        )
    print(f"glmtune / {label}: {results['speedup']:.2f}× tokens/s, {results['rss_ratio']:.2f}× peak RSS")


def machine_name(block: dict[str, Any]) -> str:
    """The processor a hardware block names (a measured block, or one recorded from the docs)."""
    cpu = block.get("cpu")
    return cpu.get("model", "?") if isinstance(cpu, dict) else str(cpu)


def auto_precision() -> str:
    """What ``train.mixed_precision: auto`` picks on this machine (``bf16``, ``fp16`` or ``no`` = fp32)."""
    from glmtune.core.config import TrainConfig
    from glmtune.models.precision import mixed_precision

    return mixed_precision(TrainConfig())


def glmtune_rate(run_dir: Path) -> dict[str, Any]:
    """Tokens, seconds and steps between the first and last train lines of a glmtune run's log.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    first, last = train[0], train[-1]
    return {
        "tokens": last["tokens"] - first["tokens"],
        "seconds": last["time"] - first["time"],
        "steps": last["step"] - first["step"],
        "final_loss": last["loss"],
        "mean_loss": sum(r["loss"] for r in train)
        / len(train),  # every step (log_steps=1): the loss curve's level
        "losses": [r["loss"] for r in train],
    }


class TrainerClock:
    """A ``TrainerCallback`` factory plus a forward hook: (time, tokens trained so far) at every step end."""

    def __init__(self, model) -> None:
        from transformers import TrainerCallback

        self.marks: list[tuple[float, int]] = []
        self.tokens = 0
        self.losses: list[float] = []
        model.register_forward_pre_hook(self._count, with_kwargs=True)
        clock = self

        class _Callback(TrainerCallback):
            def on_step_end(self, *_args, **_kwargs):
                clock.marks.append((time.time(), clock.tokens))

            def on_log(self, _args, _state, _control, logs=None, **_kwargs):
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        self.callback = _Callback()

    def _count(self, _module, _args, kwargs) -> None:
        if kwargs.get("attention_mask") is not None:
            self.tokens += int(kwargs["attention_mask"].sum())

    def rate(self) -> dict[str, Any]:
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return {
            "tokens": n1 - n0,
            "seconds": t1 - t0,
            "steps": len(self.marks) - 1,
            "final_loss": self.losses[-1] if self.losses else None,
            "mean_loss": sum(self.losses) / len(self.losses) if self.losses else None,
            "losses": self.losses,
        }


def compare_losses(trainer: list[float], glmtune: list[float]) -> dict[str, float]:
    """Step-by-step agreement of two per-step loss curves over the same batches (the shorter's length)."""
    pairs = list(zip(trainer, glmtune))
    diffs = [abs(a - b) for a, b in pairs]
    return {
        "steps": len(pairs),
        "mean_abs_diff": sum(diffs) / len(diffs),
        "max_abs_diff": max(diffs),
        "mean_rel_diff": sum(d / abs(a) for d, (a, _) in zip(diffs, pairs)) / len(pairs),
    }


def worker_output(result: dict[str, Any]) -> None:
    """A worker's last stdout line: its result plus its own peak RSS."""
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(script: str, kind: str, argv: list[str]) -> dict[str, Any]:
    """Run ``script --worker kind argv…`` in a fresh process; its peak RSS is its own."""
    proc = subprocess.run([sys.executable, script, "--worker", kind, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result
