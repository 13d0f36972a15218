"""``glmtune env``: through the CLI entry, as JSON and as lines to paste into a bug report."""

from __future__ import annotations

import json
import subprocess
import sys

from glmtune.cli import main
from glmtune.cli.env import lines
from glmtune.core import hardware
from tests.helpers import ENV

KEYS = {"versions", "os", "cpu", "native_bf16", "gpu", "threads", "caches", "probe", "precision_auto"}


def test_env_json_through_the_cli_entry_applies_threads_first(capsys, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(hardware, "_applied", None)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 0)
    main(["env", "--no-probe", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= KEYS
    assert info["probe"] is None
    assert info["precision_auto"]["choice"] in ("bf16", "fp16", "no")
    assert calls == [hardware.choose_threads()[0]]  # the command ran with glmtune's threads


def test_env_lines_for_a_bug_report(capsys):
    main(["env", "--no-probe"])
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("- ") and ": " in line for line in out)
    text = "\n".join(out)
    for part in ("glmtune version", "torch version", "Processor", "Instruction sets", "Threads", "Precision"):
        assert part in text
    assert "- Matmul probe: skipped (--no-probe)" in out


def test_lines_show_the_probe_and_the_rate_auto_computes_in():
    info = hardware.facts(probe_seconds=None)
    info["gpu"] = None
    info["precision_auto"] = {
        "choice": "no",
        "reason": "fp32: no native bf16 (AVX2 only): bf16 would be emulated",
    }
    info["probe"] = {
        "device": "cpu",
        "threads": 2,
        "fp32": {"size": 1024, "products": 9, "seconds": 0.6, "gflops": 30.7},
        "bf16": {"size": 256, "products": 5, "seconds": 0.4, "gflops": 0.6},
        "bf16_over_fp32": 0.02,
    }
    text = "\n".join(lines(info))
    assert "fp32 30.7 GFLOP/s (1024x1024), bf16 0.6 GFLOP/s (256x256)" in text
    assert "- Demo speed: set by the fp32 rate, 30.7 GFLOP/s" in text
    info["gpu"] = {
        "cuda": "12.4",
        "bf16": True,
        "devices": [{"name": "H100", "memory_gib": 80, "capability": "9.0"}],
    }
    assert "- GPU: H100 (80 GiB, sm 9.0); CUDA 12.4, bf16 yes" in lines(info)


def test_the_console_command_runs():
    done = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "env", "--no-probe", "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)
    assert info["threads"]["glmtune_threads"] == 1 and info["threads"]["OMP_NUM_THREADS"] == "1"
    assert info["threads"]["torch_threads"] == 1
