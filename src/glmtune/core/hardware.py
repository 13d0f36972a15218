"""Facts about the machine a run is on, and how many CPU threads glmtune computes with.

Contract:
- ``facts(probe=True)`` is a JSON-able dict — versions, OS, processor model and the instruction sets that decide
  precision (AVX2, FMA, AVX512F, AVX512-BF16, AMX), physical cores vs logical CPUs, GPU, threads, cache folders and,
  optionally, a measured fp32/bf16 matmul probe (about one second). ``glmtune env`` prints it; every benchmark
  stores it beside its results, so each figure says where it was measured.
- ``parse_cpuinfo`` is pure (any ``/proc/cpuinfo`` text in, facts out), so it is tested on other machines' text.
- ``choose_threads`` decides intra-op threads (physical cores, ``OMP_NUM_THREADS`` when set); ``apply_threads``
  hands that to ``torch.set_num_threads`` once per process, where a command starts (``glmtune.cli``).
Standard library and torch only, and torch is imported inside the functions that need it: reading CPU facts
stays instant.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# The CPU flags that decide how fast (and in which precision) torch computes here, as /proc/cpuinfo spells them.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# Native bf16 matrix products on a CPU; without one of these torch emulates bf16 (~50x slower than fp32 on AVX2).
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")
PACKAGES = ("glmtune", "torch", "transformers", "peft", "accelerate")
PROBE_SECONDS = 1.0

_applied: int | None = None  # what apply_threads set, once per process


# --------------------------------------------------------------------------- processor


def parse_cpuinfo(text: str, cpus: set[int] | None = None) -> dict[str, Any]:
    """Model name, flags, logical CPUs and physical cores from ``/proc/cpuinfo`` text.

    ``cpus``: the logical CPUs this process may use (its affinity); the others are not counted. Physical cores are
    distinct (``physical id``, ``core id``) pairs: hyper-threads of one core share them. Where the text has no
    core ids (ARM, some VMs) every logical CPU counts as a core. Flags are the first processor's (``flags`` on x86,
    ``Features`` on ARM).
    """
    blocks = [b for b in text.split("\n\n") if b.strip()]
    model: str | None = None
    flags: set[str] | None = None
    logical = 0
    cores: set[tuple[str, str]] = set()
    core_ids_seen = True
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
        if "processor" not in fields:
            continue
        index = fields["processor"]
        if cpus is not None and index.isdigit() and int(index) not in cpus:
            continue
        logical += 1
        model = model or fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
        if flags is None and ("flags" in fields or "features" in fields):
            flags = set((fields.get("flags") or fields.get("features") or "").split())
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
        else:
            core_ids_seen = False
    return {
        "model": model,
        "flags": sorted(flags or ()),
        "logical_cpus": logical,
        "physical_cores": len(cores) if core_ids_seen and cores else logical,
    }


def read_cpuinfo() -> str:
    """``/proc/cpuinfo``, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def usable_cpus() -> set[int] | None:
    """The logical CPUs this process may run on (its affinity), or None where the OS does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def cpu_facts(text: str | None = None, cpus: set[int] | None = None) -> dict[str, Any]:
    """The processor: model, the instruction sets in ``FLAGS``, logical CPUs, usable CPUs and physical cores."""
    if text is None:
        text, cpus = read_cpuinfo(), usable_cpus()
    parsed = parse_cpuinfo(text, cpus) if text else None
    machine = parsed or {"model": None, "flags": [], "logical_cpus": 0, "physical_cores": 0}
    logical = os.cpu_count() or 1
    usable = len(cpus) if cpus else logical
    return {
        "model": machine["model"] or platform.processor() or platform.machine() or "unknown",
        "architecture": platform.machine(),
        "instruction_sets": {flag: flag in machine["flags"] for flag in FLAGS},
        "logical_cpus": logical,
        "usable_cpus": usable,
        # no cpuinfo: assume no hyper-threads (the count torch and OpenMP would use anyway)
        "physical_cores": machine["physical_cores"] or usable,
        "cpuinfo": bool(parsed),
    }


def native_bf16(cpu: dict[str, Any] | None = None) -> str | None:
    """The CPU feature that makes bf16 native here (``amx_bf16`` first), or None: bf16 would be emulated."""
    sets = (cpu or cpu_facts())["instruction_sets"]
    return next((flag for flag in NATIVE_BF16 if sets.get(flag)), None)


# --------------------------------------------------------------------------- threads


def choose_threads(env: dict[str, str] | None = None, cpu: dict[str, Any] | None = None) -> tuple[int, str]:
    """Intra-op threads for this process, and why: ``OMP_NUM_THREADS`` when set, else the physical cores.

    Physical cores, not hyper-threads: two threads on one core share its FMA units, so a second thread per core
    adds contention, not arithmetic. The faster default, measured by ``benchmarks/threads.py``
    (``benchmarks/results/threads.json``, SmolLM2-135M in fp32) on the 2-core AMD EPYC (AVX2, 2 physical cores):
    two threads against one ran a LoRA training step 1.56x as fast and greedy generation as fast or slightly faster
    (1 prompt 1.00x, 8 prompts 1.07x) — never slower — so the default is every physical core. Under ``accelerate
    launch``/``torchrun`` the processes on this machine (``LOCAL_WORLD_SIZE``) share the cores instead of each
    taking all of them.
    """
    env = os.environ if env is None else env
    requested = env.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) > 0:
        return int(requested), f"OMP_NUM_THREADS={requested}"
    cpu = cpu or cpu_facts()
    cores = max(1, min(cpu["physical_cores"], cpu["usable_cpus"]))
    local = env.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    if processes > 1:
        threads = max(1, cores // processes)
        return threads, f"{cores} physical cores shared by {processes} processes"
    return cores, f"{cores} physical cores, {cpu['usable_cpus']} logical CPUs"


def apply_threads() -> int:
    """``torch.set_num_threads(choose_threads())`` once per process; later calls return what was set."""
    global _applied
    if _applied is None:
        import torch

        _applied = choose_threads()[0]
        if torch.get_num_threads() != _applied:
            torch.set_num_threads(_applied)
    return _applied


# --------------------------------------------------------------------------- the rest of the machine


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the libraries that decide a run's behaviour (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def memory_gib() -> float | None:
    """Total RAM (``MemTotal`` of /proc/meminfo), or None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def cache_folders(env: dict[str, str] | None = None) -> dict[str, str]:
    """Where downloads and converted models go: Hugging Face's home and hub cache, glmtune's built-in models.

    The rules are huggingface_hub's (``HF_HOME``, ``XDG_CACHE_HOME``, ``HF_HUB_CACHE``) and
    ``glmtune.models.builtin.default_cache_dir``'s (``GLMTUNE_CACHE``), restated here because core sits below
    both; a test keeps the latter in step.
    """
    env = os.environ if env is None else env
    xdg = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    hf_home = Path(env.get("HF_HOME") or xdg / "huggingface").expanduser()
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or str(hf_home / "hub")
    glmtune = env.get("GLMTUNE_CACHE") or str(Path.home() / ".cache" / "glmtune" / "models")
    return {"hf_home": str(hf_home), "hf_hub_cache": str(Path(hub).expanduser()), "glmtune_models": glmtune}


def gpu_facts() -> dict[str, Any] | None:
    """The CUDA devices torch sees (name, memory, bf16), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return {"cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(), "devices": devices}


def threads_facts() -> dict[str, Any]:
    """Threads torch computes with now, glmtune's choice and why, and the environment that steers them."""
    import torch

    chosen, why = choose_threads()
    return {
        "torch_threads": torch.get_num_threads(),
        "glmtune_threads": chosen,
        "glmtune_threads_reason": why,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


# --------------------------------------------------------------------------- the probe


def _matmul_rate(dtype, budget: float) -> dict[str, Any]:
    """GFLOP/s of square ``dtype`` matmuls: the size grows (128 → 1024) while one product is cheap, then
    products of that size repeat until ``budget`` seconds are spent. Each step up costs ≤ 8× a product that took
    under budget/20, so a slow (emulated) dtype stays small and the whole stays near ``budget``."""
    import torch

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    size = 128
    while True:
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        t0 = time.perf_counter()
        a @ b  # the first product of a size also warms its kernel up
        took = time.perf_counter() - t0
        if size >= 1024 or took > budget / 20 or time.perf_counter() - start > budget / 2:
            break
        size *= 2
    left = max(budget - (time.perf_counter() - start), took)
    products, t0 = 0, time.perf_counter()
    while True:
        a @ b
        products += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= left:
            break
    return {
        "size": size,
        "products": products,
        "seconds": round(elapsed, 3),
        "gflops": round(2 * size**3 * products / elapsed / 1e9, 2),
    }


def probe(seconds: float = PROBE_SECONDS) -> dict[str, Any]:
    """Measured fp32 and bf16 matmul GFLOP/s on the CPU, with torch's current threads (~``seconds`` in all)."""
    import torch

    fp32 = _matmul_rate(torch.float32, 0.6 * seconds)
    bf16 = _matmul_rate(torch.bfloat16, 0.4 * seconds)
    return {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "fp32": fp32,
        "bf16": bf16,
        "bf16_over_fp32": round(bf16["gflops"] / fp32["gflops"], 3) if fp32["gflops"] else None,
    }


# --------------------------------------------------------------------------- all of it


def facts(probe_seconds: float | None = PROBE_SECONDS) -> dict[str, Any]:
    """Everything above as one JSON-able dict; ``probe_seconds=None`` skips the measured probe."""
    cpu = cpu_facts()
    return {
        "versions": versions(),
        "os": platform.platform(),
        "python_executable": sys.executable,
        "cpu": cpu,
        "native_bf16": native_bf16(cpu),
        "memory_gib": memory_gib(),
        "gpu": gpu_facts(),
        "threads": threads_facts(),
        "caches": cache_folders(),
        "probe": probe(probe_seconds) if probe_seconds else None,
    }


__all__ = [
    "FLAGS",
    "NATIVE_BF16",
    "apply_threads",
    "cache_folders",
    "choose_threads",
    "cpu_facts",
    "facts",
    "native_bf16",
    "parse_cpuinfo",
    "probe",
    "versions",
]
