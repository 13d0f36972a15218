"""``glmtune env``: this machine's facts for a bug report (as ``transformers env`` and ``accelerate env`` do).

Versions, OS, processor and the instruction sets that decide precision, cores and threads, GPU, cache folders, the
precision ``train.mixed_precision: auto`` picks here and why, and a measured fp32/bf16 matmul probe (about one
second; ``--no-probe`` skips it). Readable "- key: value" lines to paste into an issue, or ``--json``. Nothing is
loaded but torch: no model, no data.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_env(args: argparse.Namespace) -> None:
    info = collect(probe=not args.no_probe)
    print(json.dumps(info, indent=2) if args.json else "\n".join(lines(info)))


def collect(probe: bool = True) -> dict[str, Any]:
    """``core.hardware.facts()`` plus ``precision_auto`` (what ``auto`` picks here, and why): what ``glmtune env``
    shows and what every benchmark stores beside its results."""
    from glmtune.core import hardware
    from glmtune.core.config import TrainConfig
    from glmtune.models.precision import precision_choice

    info = hardware.facts(hardware.PROBE_SECONDS if probe else None)
    choice, reason = precision_choice(TrainConfig())
    info["precision_auto"] = {"choice": choice, "reason": reason}
    return info


def lines(info: dict[str, Any]) -> list[str]:
    """``facts()`` plus ``precision_auto`` as "- key: value" lines, most telling first."""
    v, cpu, threads, caches = info["versions"], info["cpu"], info["threads"], info["caches"]
    sets = " · ".join(
        f"{flag.upper().replace('_', '-')} {'yes' if present else 'no'}"
        for flag, present in cpu["instruction_sets"].items()
    )
    if not cpu["cpuinfo"]:
        sets += " (unknown: no /proc/cpuinfo)"
    gpu = info["gpu"]
    gpus = (
        ", ".join(f"{d['name']} ({d['memory_gib']} GiB, sm {d['capability']})" for d in gpu["devices"])
        + f"; CUDA {gpu['cuda']}, bf16 {'yes' if gpu['bf16'] else 'no'}"
        if gpu
        else "none (torch sees no CUDA device)"
    )
    precision = info["precision_auto"]
    out = [
        f"- glmtune version: {v['glmtune']}",
        f"- Python version: {v['python']} ({info['python_executable']})",
        f"- torch version: {v['torch']}",
        f"- transformers version: {v['transformers']}",
        f"- peft version: {v['peft']}",
        f"- accelerate version: {v['accelerate']}",
        f"- Platform: {info['os']}",
        f"- Processor: {cpu['model']} ({cpu['architecture']})",
        f"- Cores: {cpu['physical_cores']} physical, {cpu['logical_cpus']} logical CPUs "
        f"({cpu['usable_cpus']} usable by this process)",
        f"- Instruction sets: {sets}",
        f"- torch CPU kernels: {threads['torch_cpu_capability']}",
        f"- Memory: {info['memory_gib']} GiB" if info["memory_gib"] else "- Memory: unknown",
        f"- GPU: {gpus}",
        f"- Threads: {threads['glmtune_threads']} (from: {threads['glmtune_threads_reason']}); torch uses "
        f"{threads['torch_threads']}; OMP_NUM_THREADS {threads['OMP_NUM_THREADS'] or 'unset'}",
        f"- Precision auto picks: {precision['reason']}",
    ]
    probe = info["probe"]
    if probe:
        fp32, bf16 = probe["fp32"], probe["bf16"]
        out.append(
            f"- Matmul probe ({probe['threads']} threads): fp32 {fp32['gflops']} GFLOP/s "
            f"({fp32['size']}x{fp32['size']}), bf16 {bf16['gflops']} GFLOP/s ({bf16['size']}x{bf16['size']}): "
            f"bf16 runs at {probe['bf16_over_fp32']}x fp32"
        )
        if gpu:
            out.append("- Demo speed: set by the GPU (the probe above measures the CPU)")
        else:
            name = "bf16" if precision["choice"] == "bf16" else "fp32"
            rate = probe[name]["gflops"]
            out.append(f"- Demo speed: set by the {name} rate, {rate} GFLOP/s (auto computes in {name})")
    else:
        out.append("- Matmul probe: skipped (--no-probe)")
    out += [
        f"- Hugging Face cache: {caches['hf_hub_cache']} (HF_HOME {caches['hf_home']})",
        f"- glmtune built-in models cache: {caches['glmtune_models']}",
    ]
    return out


__all__ = ["cmd_env", "collect", "lines"]
