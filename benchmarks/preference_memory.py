"""LoRA DPO's peak memory against LoRA SFT of the same model on the same sequences, each in a fresh process.

DPO with LoRA keeps no second copy of the model: its reference is the same weights with the adapter switched off
(peft's ``disable_adapter``, under ``no_grad``). This measures what that costs. Both sides run glmtune's own code
on the same model (LoRA r=8, alpha 16, all linear layers), the same rows and the same sequence cut:

* ``dpo``: ``task: preference`` (DPO) batches of ``--batch-size`` B pairs from the built-in ``chatterbot-zh-pairs``
  training split; each batch is 2B sequences (B chosen, B rejected, the prompt repeated in each);
* ``sft``: the SFT task's loss (``tasks.sft.SFT.loss``: token cross-entropy on the learned positions, the LM
  head on those only) on exactly those batches of 2B sequences: SFT at batch 2B over the same tokens.

Each side, in its own child process: load the model, apply LoRA, then ``--steps`` optimizer steps (AdamW over the
LoRA weights) on the ``--steps`` longest batches, longest first. Reported per side: peak RSS (``ru_maxrss``, the
whole process: loading included), the RSS after loading (before the first step) and the peak increase over it,
seconds per step. The ratio dpo / sft is the check: it must stay at or under 1.1.

    flock /tmp/glmtune-cpu.lock .venv/bin/python benchmarks/preference_memory.py [--batch-size 4] [--steps 3]

Writes benchmarks/results/preference_memory.json (``--out`` to change) with the hardware block.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import run_child, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize() / 2**20


def overrides(args: argparse.Namespace, task: str) -> list[str]:
    return [
        f"task={task}",
        f"model.name_or_path={args.model}",
        "data.dataset=chatterbot-zh-pairs" if task == "preference" else "data.dataset=chatterbot-zh",
        "method.name=lora",
        "method.lora_r=8",
        "method.lora_alpha=16",
        f"train.batch_size={args.batch_size}",
        f"train.max_seq_len={args.max_seq_len}",
        "train.mixed_precision='no'",  # quoted: YAML reads a bare no as false
    ]


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from glmtune import methods
    from glmtune.core import config
    from glmtune.train import tasks

    cfg = config.load(None, [*overrides(args, "preference"), "preference.loss=dpo"])
    task = tasks.create(cfg)
    task.load_data()
    model, tokenizer = task.build_model()
    methods.apply(model, cfg.method)
    batches = sorted(task.make_loaders(tokenizer, model)["train"], key=lambda b: -b["input_ids"].numel())
    batches = batches[: args.steps]
    if args.worker == "sft":
        sft = tasks.create(config.load(None, overrides(args, "sft")))  # only its loss is used
        loss_of = lambda batch: sft.loss(model, batch, accelerator)[0]  # noqa: E731
    else:
        loss_of = lambda batch: task.loss(model, batch, accelerator)[0]  # noqa: E731
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    loaded = current_mib()
    began = time.perf_counter()
    for batch in batches:
        loss_of(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - began
    return {
        "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
        "seconds": round(seconds, 2),
        "sequences_per_step": int(batches[0]["input_ids"].shape[0]),
        "tokens_per_step": [int(b["input_ids"].numel()) for b in batches],
        "rss_after_load_mib": round(loaded, 1),
        "seconds_per_step": round(seconds / len(batches), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="DPO pairs per step (SFT gets 2x sequences)"
    )
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "preference_memory.json")
    parser.add_argument("--worker", choices=["sft", "dpo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from glmtune.core.hardware import apply_threads

        apply_threads()
        result = worker(args)
        result["peak_rss_mib"] = round(peak_mib(), 1)
        result["peak_over_load_mib"] = round(result["peak_rss_mib"] - result["rss_after_load_mib"], 1)
        print(json.dumps(result))
        return
    argv = ["--model", args.model, "--batch-size", str(args.batch_size)]
    argv += ["--max-seq-len", str(args.max_seq_len), "--steps", str(args.steps)]
    results: dict[str, Any] = {
        "command": " ".join(["benchmarks/preference_memory.py", *sys.argv[1:]]),
        "settings": {
            "model": args.model,
            "dpo_pairs_per_step": args.batch_size,
            "sft_sequences_per_step": 2 * args.batch_size,
            "max_seq_len": args.max_seq_len,
            "steps": args.steps,
            "lora": {"r": 8, "alpha": 16, "target": "all linear layers"},
            "reference": "the adapter switched off (no second copy)",
        },
    }
    for kind in ("sft", "dpo"):
        results[kind] = run_child(__file__, kind, argv)
    results["peak_rss_ratio_dpo_over_sft"] = round(
        results["dpo"]["peak_rss_mib"] / results["sft"]["peak_rss_mib"], 3
    )
    write_results(args.out, results, precision="fp32")
    for kind in ("sft", "dpo"):
        r = results[kind]
        print(f"{kind}: peak RSS {r['peak_rss_mib']:.0f} MiB ({r['peak_over_load_mib']:+.0f} over loading)")
    print(f"dpo / sft peak RSS: {results['peak_rss_ratio_dpo_over_sft']:.3f}  ->  {args.out}")


if __name__ == "__main__":
    main()
