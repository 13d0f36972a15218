"""CPU threads: one against two (or ``--threads …``) for a training step and for serving-like generation.

One process, one model (a built-in, SmolLM2-135M by default), the thread counts taken in turn (1, 2, 1, 2, …) with
``torch.set_num_threads`` so a neighbour's load falls on both alike; each figure is the median over ``--repeats``
after one warm-up per count. In the precision glmtune's ``auto`` picks here (autocast bf16 where native, else
fp32). Three workloads:

* ``train_step``: LoRA (peft, r=8, all linear layers) forward + backward + AdamW step on a fixed batch of
  ``--batch-size`` × ``--seq-len`` random token ids;
* ``generate_1`` and ``generate_8``: greedy ``generate`` of ``--new-tokens`` tokens (end of text ignored, so the
  work is fixed) for 1 and for 8 prompts of 32 tokens — one request alone, and a full serving batch.

    flock /tmp/glmtune-cpu.lock .venv/bin/python benchmarks/threads.py [--model smollm2-135m-instruct]

Writes benchmarks/results/threads.json (``--out`` to change): seconds per workload and thread count, and each
count's speed relative to one thread. ``glmtune.core.hardware.choose_threads`` keeps the faster default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import auto_precision, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def workloads(args) -> dict[str, Any]:
    """name → a function running one timed unit of that workload."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from glmtune.models import resolve_builtin

    path = resolve_builtin(args.model) if "/" not in args.model else args.model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(100, vocab, (args.batch_size, args.seq_len), generator=generator)  # [batch, seq]
    prompts = torch.randint(100, vocab, (8, 32), generator=generator)  # [8, 32]
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    lora = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear")
    )
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        lora.train()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = lora(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def generate(rows: int):
        def run() -> None:
            lora.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                lora.generate(
                    input_ids=prompts[:rows],
                    attention_mask=torch.ones_like(prompts[:rows]),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )

        return run

    return {"train_step": train_step, "generate_1": generate(1), "generate_8": generate(8)}


def measure(args) -> dict[str, Any]:
    import torch

    runs = workloads(args)
    results: dict[str, Any] = {}
    for name, run in runs.items():
        times: dict[int, list[float]] = {n: [] for n in args.threads}
        for n in args.threads:  # one warm-up per thread count
            torch.set_num_threads(n)
            run()
        for _ in range(args.repeats):
            for n in args.threads:
                torch.set_num_threads(n)
                start = time.perf_counter()
                run()
                times[n].append(time.perf_counter() - start)
        median = {n: statistics.median(t) for n, t in times.items()}
        one = median[args.threads[0]]
        results[name] = {
            "seconds": {str(n): [round(x, 4) for x in t] for n, t in times.items()},
            "median_s": {str(n): round(m, 4) for n, m in median.items()},
            f"speed_vs_{args.threads[0]}_thread": {str(n): round(one / m, 3) for n, m in median.items()},
        }
        print(
            f"{name:>11}: "
            + " · ".join(f"{n} thread(s) {m:.3f} s ({one / m:.2f}x)" for n, m in median.items()),
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name or a model folder")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="thread counts (first: the base)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per workload and thread count")
    parser.add_argument("--batch-size", type=int, default=4, help="train_step: sequences per batch")
    parser.add_argument("--seq-len", type=int, default=64, help="train_step: tokens per sequence")
    parser.add_argument("--new-tokens", type=int, default=16, help="generate_*: tokens generated per prompt")
    parser.add_argument("--out", type=Path, default=RESULTS / "threads.json")
    args = parser.parse_args()
    args.precision = "bf16" if auto_precision() == "bf16" else "fp32"
    start = time.perf_counter()
    results = measure(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "precision")}
    payload = {
        "settings": settings,
        "workloads": results,
        "seconds": round(time.perf_counter() - start, 1),
        "command": "benchmarks/threads.py " + " ".join(sys.argv[1:]),
    }
    write_results(args.out, payload, precision=args.precision)
    print(args.out)


if __name__ == "__main__":
    main()
