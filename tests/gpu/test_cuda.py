"""On a CUDA GPU (marked ``gpu``; skipped without one, so ``make test`` on CPU skips them at once): bf16 autocast
training, SDPA attention, QLoRA 4-bit with bitsandbytes' CUDA kernels (train, resume, merge) and generation.
benchmarks/gpu_check.sh runs them on a GPU machine."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers import sft_config, tiny_config, train
from tests.tiny import save_tiny_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)"),
]
IDS = [[2, 5, 9, 14, 7, 3, 11, 20]]


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """The tiny Llama at width 64 (bitsandbytes' 4-bit blocks)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-64"), hidden_size=64, intermediate_size=128)


@pytest.mark.usefixtures("reset_accelerate")
def test_bf16_autocast_training_runs_on_the_gpu(tmp_path, wide_model_dir, sentiment_file):
    cfg = tiny_config(wide_model_dir, sentiment_file, train={"max_steps": 4, "mixed_precision": "bf16"})
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["test"]["loss"] == metrics["test"]["loss"], "finite"
    losses = [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(v == v for v in losses)


def test_sdpa_attention_matches_eager_on_the_gpu(wide_model_dir):
    from transformers import AutoModelForCausalLM

    logits = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(wide_model_dir, attn_implementation=impl).cuda().eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            logits[impl] = model(input_ids=torch.tensor(IDS, device="cuda")).logits.float()  # [1, 8, vocab]
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=2e-2, rtol=2e-2)


@pytest.mark.usefixtures("reset_accelerate")
def test_qlora_4bit_trains_resumes_and_merges_on_the_gpu(tmp_path, wide_model_dir, chat_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from glmtune.cli import main

    pytest.importorskip("bitsandbytes")
    cfg = sft_config(
        wide_model_dir, {"train_file": str(chat_file)}, model={"quantization": "4bit"},
        train={"max_steps": 3, "eval_steps": 1, "save_total_limit": 3},
    )  # fmt: skip
    (tmp_path / "a").mkdir()
    straight = train(tmp_path / "a", cfg)
    crashed = tmp_path / "crashed"  # a run that died after its step-2 checkpoint
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-0000003")
    (crashed / "metrics.json").unlink()
    main(["train", "--resume", str(crashed)])
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (straight, crashed))
    assert b["steps"] == 3 and b["validation"]["loss"] == pytest.approx(a["validation"]["loss"], abs=1e-5)
    out = tmp_path / "merged"
    main(["export", str(straight), "--merge", "--out", str(out)])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(straight / "adapter")).eval()
    with torch.no_grad():
        expected, got = (
            reference(input_ids=torch.tensor(IDS)).logits,
            merged(input_ids=torch.tensor(IDS)).logits,
        )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_greedy_generation_on_the_gpu_equals_the_cpu(wide_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(IDS)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    cpu = model.generate(ids, **kwargs)
    gpu = model.cuda().generate(ids.cuda(), **kwargs).cpu()
    assert torch.equal(gpu, cpu)
