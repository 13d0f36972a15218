"""Sharded training on CPU: accelerate's FSDP2 (examples/accelerate/fsdp.yaml) with 2 gloo processes.

One flow (multi-process launches are slow): the FSDP run gives one process's loss curve with the same global
batch, is SIGKILLed while writing a checkpoint and resumes under FSDP to the same result, and its LoRA adapter
(gathered whole from the shards) loads in plain peft and computes what the one-process adapter computes.
accelerate turns FSDP on only for accelerators: tests/smoke/fsdp_cpu.py sets it on for CPU processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ENV, REPO, tiny_config, train, write_config


def fsdp_launch(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "examples" / "accelerate" / "fsdp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no",
        "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",  # the tiny model is a Llama
        str(REPO / "tests" / "smoke" / "fsdp_cpu.py"), "train", *args,
    ]  # fmt: skip
    env = {k: v for k, v in ENV.items() if k != "GLMTUNE_FAULT"}
    env.update({"ACCELERATE_USE_CPU": "1", **({"GLMTUNE_FAULT": fault} if fault else {})})
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def curve(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows]


def features(model_dir: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModel

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(model_dir)), str(adapter)).eval()
    ids = torch.tensor([[2, 5, 9, 14, 7, 11]])
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state  # [1, 6, hidden]


def test_fsdp_matches_one_process_resumes_and_saves_a_peft_adapter(
    tmp_path, tiny_model_dir, sentiment_file, reset_accelerate
):
    def config(batch_size: int) -> dict:
        # Plain batches (no length grouping): 2 processes × 4 rows are exactly one process's batches of 8.
        return tiny_config(
            tiny_model_dir,
            sentiment_file,
            train={"max_steps": 4, "batch_size": batch_size, "group_by_length": False, "eval_steps": 1,
                   "save_steps": 2},
            method={"name": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        )  # fmt: skip

    (tmp_path / "one").mkdir()
    one = train(tmp_path / "one", config(8))
    (tmp_path / "fsdp").mkdir()
    cfg, run = write_config(tmp_path / "fsdp", config(4)), tmp_path / "fsdp" / "run"

    killed = fsdp_launch(
        str(cfg), "--output", str(run), fault="weights@4"
    )  # mid-write of step 4's checkpoint
    assert killed.returncode != 0 and not (run / "metrics.json").exists(), killed.stderr[-3000:]
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-0000002"]
    resumed = fsdp_launch("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = curve(one), curve(run)
    assert [x[:2] for x in a] == [x[:2] for x in b], "the same steps, each logged once"
    assert [x[2] for x in b] == pytest.approx([x[2] for x in a], rel=1e-5, abs=1e-6), "the same loss curve"
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, run))
    assert m2["best_step"] == m1["best_step"] and m2["steps"] == 4
    assert m2["test"]["loss"] == pytest.approx(m1["test"]["loss"], rel=1e-5)

    from safetensors.torch import load_file

    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k), "whole, trained tensors"
    reference, sharded = features(tiny_model_dir, one / "adapter"), features(tiny_model_dir, run / "adapter")
    torch.testing.assert_close(sharded, reference, rtol=1e-4, atol=1e-5)
