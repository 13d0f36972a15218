"""Machine facts: /proc/cpuinfo of other machines parsed, the thread choice, a JSON-able whole, auto's reasons."""

from __future__ import annotations

import json

import pytest

from glmtune.core import hardware
from glmtune.core.config import TrainConfig

FLAGS_AMX = "fpu sse sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
FLAGS_AVX2 = "fpu sse sse2 ht avx fma avx2"


def cpuinfo(model: str, flags: str, cores: list[tuple[int, int]]) -> str:
    """``/proc/cpuinfo`` text: one block per logical CPU, ``cores`` its (physical id, core id)."""
    return (
        "\n\n".join(
            f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {model}\nphysical id\t: {socket}\n"
            f"core id\t\t: {core}\ncpu cores\t: {len({c for _, c in cores})}\nflags\t\t: {flags}"
            for i, (socket, core) in enumerate(cores)
        )
        + "\n\n"
    )


INTEL_HT = cpuinfo("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", FLAGS_AMX, [(0, 0), (0, 0)])
AMD = cpuinfo("AMD EPYC", FLAGS_AVX2, [(0, 0), (0, 1)])
TWO_SOCKETS = cpuinfo(
    "AMD EPYC", FLAGS_AVX2, [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0), (0, 1), (1, 0), (1, 1)]
)
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\n\nprocessor\t: 1\nFeatures\t: fp asimd sve\n"


def test_hyper_threads_of_one_core_count_once_and_flags_are_read():
    facts = hardware.parse_cpuinfo(INTEL_HT)
    assert facts["model"].startswith("Intel(R) Xeon(R)")
    assert (facts["logical_cpus"], facts["physical_cores"]) == (2, 1)
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= set(facts["flags"])


def test_cores_are_distinct_socket_and_core_ids():
    assert hardware.parse_cpuinfo(AMD)["physical_cores"] == 2
    assert hardware.parse_cpuinfo(TWO_SOCKETS)["physical_cores"] == 4  # 8 logical, 2 sockets × 2 cores


def test_only_the_cpus_this_process_may_use_count():
    facts = hardware.parse_cpuinfo(TWO_SOCKETS, cpus={0, 4})  # both hyper-threads of socket 0, core 0
    assert (facts["logical_cpus"], facts["physical_cores"]) == (2, 1)


def test_without_core_ids_every_logical_cpu_is_a_core():
    facts = hardware.parse_cpuinfo(ARM)
    assert (facts["logical_cpus"], facts["physical_cores"], facts["model"]) == (2, 2, None)
    assert "asimd" in facts["flags"]


def test_instruction_sets_and_native_bf16():
    intel = hardware.cpu_facts(INTEL_HT, {0, 1})
    amd = hardware.cpu_facts(AMD, {0, 1})
    assert intel["instruction_sets"] == dict.fromkeys(hardware.FLAGS, True)
    assert amd["instruction_sets"] == {
        "avx2": True,
        "fma": True,
        "avx512f": False,
        "avx512_bf16": False,
        "amx_bf16": False,
        "amx_tile": False,
    }
    assert hardware.native_bf16(intel) == "amx_bf16"
    assert hardware.native_bf16(amd) is None
    assert intel["cpuinfo"] and not hardware.cpu_facts("", None)["cpuinfo"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 2),  # the physical cores
        ({"OMP_NUM_THREADS": "1"}, 1),  # the user's word wins
        ({"OMP_NUM_THREADS": "7"}, 7),
        ({"OMP_NUM_THREADS": "0"}, 2),  # not a thread count: ignored
        ({"OMP_NUM_THREADS": "four"}, 2),
        ({"LOCAL_WORLD_SIZE": "2"}, 1),  # two processes share the two cores
        ({"LOCAL_WORLD_SIZE": "4"}, 1),
        ({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "2"}, 2),
    ],
)
def test_threads_are_physical_cores_unless_omp_num_threads_says(env, expected):
    cpu = hardware.cpu_facts(TWO_SOCKETS, {0, 1, 4, 5})  # 4 usable logical CPUs, 2 physical cores
    threads, why = hardware.choose_threads(env, cpu)
    assert threads == expected
    assert ("OMP_NUM_THREADS" in why) == (env.get("OMP_NUM_THREADS") in ("1", "7", "2"))


def test_hyper_threads_do_not_get_threads():
    assert hardware.choose_threads({}, hardware.cpu_facts(INTEL_HT, {0, 1}))[0] == 1


def test_apply_threads_sets_torch_once(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(hardware, "_applied", None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 99)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.apply_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert hardware.apply_threads() == 3  # decided once per process
    assert calls == [3]


def test_the_facts_are_json_and_name_every_part():
    facts = json.loads(json.dumps(hardware.facts(probe_seconds=None)))
    assert set(facts) >= {"versions", "os", "cpu", "gpu", "threads", "caches", "probe", "memory_gib"}
    assert set(facts["versions"]) == {"python", *hardware.PACKAGES}
    assert facts["probe"] is None
    assert set(facts["cpu"]["instruction_sets"]) == set(hardware.FLAGS)
    assert facts["threads"]["glmtune_threads"] >= 1


def test_the_probe_measures_both_precisions():
    probe = json.loads(json.dumps(hardware.probe(seconds=0.05)))  # tiny: the shape, not the speed
    for dtype in ("fp32", "bf16"):
        assert probe[dtype]["products"] >= 1 and probe[dtype]["gflops"] > 0
        assert probe[dtype]["size"] in (128, 256, 512, 1024)


def test_cache_folders_follow_the_libraries_rules(monkeypatch, tmp_path):
    from glmtune.models.builtin import default_cache_dir

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "glm"))
    folders = hardware.cache_folders()
    assert folders["hf_hub_cache"] == str(tmp_path / "hf" / "hub")
    assert folders["glmtune_models"] == str(default_cache_dir())
    monkeypatch.delenv("GLMTUNE_CACHE")
    assert hardware.cache_folders()["glmtune_models"] == str(default_cache_dir())


@pytest.mark.parametrize(
    ("text", "choice", "reason"),
    [
        (INTEL_HT, "bf16", "bf16: the CPU has AMX-BF16"),
        (AMD, "no", "fp32: no native bf16 (AVX2 only): bf16 would be emulated"),
        ("", "no", "fp32: the CPU's instruction sets are unknown here (no /proc/cpuinfo)"),
    ],
)
def test_auto_precision_says_why(monkeypatch, text, choice, reason):
    import torch

    from glmtune.models.precision import precision_choice

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = hardware.cpu_facts(text, {0, 1})
    assert precision_choice(TrainConfig(), cpu) == (choice, reason)
    assert precision_choice(TrainConfig(mixed_precision="bf16"), cpu)[0] == "bf16"  # set: kept as is
