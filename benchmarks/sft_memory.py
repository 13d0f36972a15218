"""Where an SFT LoRA step's memory goes: the tensors saved for backward by part of the model, and peak RSS.

``benchmarks/sft_throughput.py`` measured ~8 GB peak RSS on both sides (glmtune and the ``Trainer``) for a
135M-parameter LoRA run. This script answers where it goes, on glmtune's own path (its SFT task, template, LoRA
and loss on learned positions only) and on the ``Trainer``'s (transformers + peft, full logits), for the largest
batch of that run (``--batch-size`` × ``--max-seq-len`` tokens; length grouping puts it first in the Trainer):

* ``saved``: bytes autograd keeps for the backward pass, by the part of the model that saved them — counted by
  ``torch.autograd.graph.saved_tensors_hooks``, each storage once, model parameters excluded;
* ``peak_rss_mib``: the process's peak RSS after loading, after the forward pass and after the backward pass,
  in a fresh child process each, with and without gradient checkpointing (``train.gradient_checkpointing``);
* ``mmap_threshold_1mib``: the plain step again with glibc's ``MALLOC_MMAP_THRESHOLD_=1048576`` (how much of
  the peak is the allocator keeping freed memory);
* ``seconds``: the forward + backward of that batch (mean of ``--repeats`` after one warm-up), the price of
  checkpointing.

    .venv/bin/python benchmarks/sft_memory.py [--batch-size 8] [--max-seq-len 256]

Writes benchmarks/results/sft_memory.json (``--out`` to change) with the hardware block.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2**20
# The part of the model a module's qualified name belongs to; the first match wins. LoRA counts in the layer it
# adapts (peft names its modules lora_A/lora_B under the layer; glmtune's fused LoRA has no module of its own).
PARTS = (
    ("attention", ("self_attn",)),
    ("mlp", ("mlp",)),
    ("norms", ("norm",)),
    ("lm head", ("lm_head",)),
    ("embeddings", ("embed",)),
)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part_of(name: str) -> str:
    for part, keys in PARTS:
        if any(key in name for key in keys):
            return part
    return "loss and other"


class SavedBytes:
    """Bytes saved for backward by part of the model: module hooks keep the innermost running module's name, a
    saved-tensor pack hook charges each new storage to it (parameters are the model's own, not activations)."""

    def __init__(self, model: Any):
        self.stack = [""]
        self.by_part: dict[str, int] = defaultdict(int)
        self.seen: set[int] = set()
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        for name, module in model.named_modules():
            module.register_forward_pre_hook(lambda _m, _a, name=name: self.enter(name))
            module.register_forward_hook(lambda _m, _a, _o: self.leave())

    def enter(self, name: str) -> None:
        self.stack.append(name)

    def leave(self) -> None:  # a forward hook that returned a value would replace the module's output
        self.stack.pop()

    def pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.seen and key not in self.params:
            self.seen.add(key)
            self.by_part[part_of(self.stack[-1])] += storage.nbytes()
        return tensor

    def mib(self) -> dict[str, float]:
        return {part: round(n / MIB, 1) for part, n in sorted(self.by_part.items(), key=lambda kv: -kv[1])}


def glmtune_step(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """glmtune's model (SFT task, LoRA as sft_throughput.py) and its largest training batch; a closure computing
    that batch's loss exactly as the training loop does; the batch's tokens (padding included)."""
    from accelerate import Accelerator
    from sft_throughput import overrides

    from glmtune import methods
    from glmtune.core import config
    from glmtune.train import tasks

    cfg = config.load(None, [*overrides(args), f"train.gradient_checkpointing={args.gc}"])
    task = tasks.create(cfg)
    task.load_data()
    model, tokenizer = task.build_model()
    methods.apply(model, cfg.method)
    if args.gc:
        model.gradient_checkpointing_enable()
    model.train()
    batch = max(task.make_loaders(tokenizer, model)["train"], key=lambda b: b["input_ids"].numel())
    accelerator = Accelerator(cpu=True)
    return model, lambda: task.loss(model, batch, accelerator)[0], batch["input_ids"].numel()


def trainer_step(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The Trainer side's model (transformers + peft as sft_throughput.py) on a batch of the same shape: what
    ``Trainer.compute_loss`` runs (full logits, the model's own loss)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from sft_throughput import LORA
    from transformers import AutoModelForCausalLM

    from glmtune.models import resolve_builtin

    model = AutoModelForCausalLM.from_pretrained(resolve_builtin(args.model))
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
    )
    model = get_peft_model(model, lora)
    if args.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 10_000, (args.batch_size, args.max_seq_len), generator=generator)
    return (
        model,
        lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss,
        ids.numel(),
    )


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from glmtune.core.hardware import apply_threads

    apply_threads()
    model, step, tokens = (glmtune_step if args.worker == "glmtune" else trainer_step)(args)
    result: dict[str, Any] = {"tokens": tokens, "peak_rss_mib": {"loaded": peak_mib()}}
    saved = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        loss = step()
    result["peak_rss_mib"]["forward"] = peak_mib()
    loss.backward()
    result["peak_rss_mib"]["backward"] = peak_mib()
    result["saved_mib"] = saved.mib()
    result["saved_total_mib"] = round(sum(saved.by_part.values()) / MIB, 1)
    times = []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        began = time.perf_counter()
        step().backward()
        times.append(time.perf_counter() - began)
    result["seconds"] = sum(times) / len(times)
    result["peak_rss_mib"]["repeated"] = peak_mib()  # the same step again: what fragmentation adds
    return result


def child(args: argparse.Namespace, side: str, gc: bool, env: dict[str, str] | None = None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", side, "--gc", str(gc).lower()]
    for name in ("model", "dataset", "template", "batch_size", "max_seq_len", "repeats"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="chatterbot-zh")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "sft_memory.json")
    parser.add_argument("--worker", choices=["glmtune", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--gc", choices=["true", "false"], default="false", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.gc = args.gc == "true"
    # sft_throughput's overrides read these; memory does not depend on them
    args.steps, args.precision = 1, "no"
    if args.worker:
        print(json.dumps(worker(args)))
        return
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "out", "gc", "steps")}
    results: dict[str, Any] = {"settings": settings}
    for side in ("trainer", "glmtune"):
        results[side] = {"plain": child(args, side, False), "gradient_checkpointing": child(args, side, True)}
        # glibc raises its mmap threshold after each large free, so freed activations stay in the heap, fragmented:
        # a fixed threshold returns every tensor over 1 MiB to the system when it is freed
        results[side]["mmap_threshold_1mib"] = child(args, side, False, {"MALLOC_MMAP_THRESHOLD_": str(MIB)})
        for mode, r in results[side].items():
            print(
                f"{side:>8} {mode:>22}: {r['tokens']} tokens · saved for backward {r['saved_total_mib']:7.0f} MiB · "
                f"peak RSS {r['peak_rss_mib']['backward']:6.0f} MiB (repeated {r['peak_rss_mib']['repeated']:6.0f}) · "
                f"{r['seconds']:.2f} s/step"
            )
            print(f"{'':>33}{r['saved_mib']}")
    write_results(args.out, results, precision="fp32")
    print(args.out)


if __name__ == "__main__":
    main()
