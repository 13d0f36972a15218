"""SFT generation evaluation: the validation split's replies by the old path and the new one, same invocation.

The old path is one transformers ``model.generate`` per length-sorted batch of ``eval.batch_size`` prompts (what
``infer.lm.generate_replies`` ran before; still the fallback for sampling and stop strings:
``continuous.generate_in_batches``). The new one is ``continuous.generate_many``: finished rows leave the batch
and freed rows take the next prompts. Same model, same prompts, same settings (the config's ``generate`` and
``eval`` sections), greedy. Measured twice when ``--run`` names a trained run of that config:

* ``untuned``: the config's model with its method applied as training starts (LoRA's B = 0: the base model's
  replies) — the ``before`` evaluation, whose untuned replies tend to run to ``max_new_tokens``;
* ``tuned``: the run's model (base + its adapter) — the ``after`` and test evaluations.

Per path: seconds, generated tokens, replies ended by a stop id or by the length limit; per case whether the two
paths wrote the same texts. Also the validation loss pass, with the LM head on every position (old) against
learned positions only (new). Model loading and a warm-up (one short generation) are not timed.

    .venv/bin/python benchmarks/sft_eval.py [--config examples/sft-small.yaml] [--run runs/sft-small]

Writes benchmarks/results/sft_eval.json (``--out`` to change) with the machine (``harness.write_results``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import auto_precision, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def time_paths(model: Any, tokenizer: Any, prompts: list[list[int]], gen_cfg: Any, batch_size: int) -> dict:
    """Both generation paths on ``prompts`` (old first), under no_grad, the model in eval mode."""
    from glmtune.infer.continuous import generate_in_batches, generate_many
    from glmtune.infer.generate import GenerationConfig, generate

    model.eval()
    result: dict[str, Any] = {}
    texts = {}
    with torch.no_grad():
        generate(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=2, stop_ids=gen_cfg.stop_ids))
        for name, run in (("old", generate_in_batches), ("new", generate_many)):
            began = time.perf_counter()
            replies = run(model, tokenizer, prompts, gen_cfg, batch_size)
            seconds = time.perf_counter() - began
            texts[name] = [r.text for r in replies]
            lengths = [len(r.token_ids) for r in replies]
            result[name] = {
                "seconds": round(seconds, 1),
                "generated_tokens": sum(lengths),
                "stopped": sum(r.finish_reason == "stop" for r in replies),
                "hit_max_new_tokens": sum(r.finish_reason == "length" for r in replies),
                "median_reply_tokens": statistics.median(lengths),
            }
            print(f"  {name}: {seconds:.1f} s, {sum(lengths)} tokens", flush=True)
    result["speedup"] = round(result["old"]["seconds"] / result["new"]["seconds"], 2)
    result["same_texts"] = sum(a == b for a, b in zip(texts["old"], texts["new"]))
    return result


def time_loss(task: Any, model: Any, accelerator: Any) -> dict:
    """The validation loss pass: every position through the LM head (old) against learned positions (new)."""
    from glmtune.models.causal import token_losses

    @torch.no_grad()
    def full_logits() -> float:
        sums_all, counts_all = [], []
        for batch in task.loaders["validation"]:
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
            with accelerator.autocast():
                logits = model(**inputs).logits  # [batch, seq, vocab]
            sums, counts = token_losses(logits, batch["labels"])
            sums_all.append(sums)
            counts_all.append(counts)
        return (torch.cat(sums_all).sum() / torch.cat(counts_all).sum()).item()

    model.eval()
    timings: dict[str, Any] = {}
    for name, run in (("old", full_logits), ("new", lambda: task._loss(model, "validation", accelerator))):
        began = time.perf_counter()
        loss = run()
        timings[name] = {"seconds": round(time.perf_counter() - began, 1), "loss": round(loss, 6)}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "sft-small.yaml"))
    parser.add_argument("--run", help="a trained run of that config: also time the tuned model")
    parser.add_argument("--out", default=str(RESULTS / "sft_eval.json"))
    args = parser.parse_args()

    from accelerate import Accelerator

    from glmtune import methods
    from glmtune.core import config as config_mod
    from glmtune.core.hardware import apply_threads
    from glmtune.infer.lm import generation_config, load_run
    from glmtune.train import tasks

    apply_threads()
    cfg = config_mod.load(args.config)
    task = tasks.create(cfg)
    task.load_data()
    model, tokenizer = task.build_model()
    methods.apply(model, cfg.method)
    accelerator = Accelerator(mixed_precision=auto_precision())
    loaders = task.make_loaders(tokenizer, model)
    task.loaders = {"validation": accelerator.prepare(loaders["validation"])}
    prompts = task._prompts("validation")
    gen_cfg = generation_config(cfg, task.format.stop_ids())
    lengths = [len(p) for p in prompts]
    payload: dict[str, Any] = {
        "command": " ".join(["benchmarks/sft_eval.py", *sys.argv[1:]]),
        "config": Path(args.config).name,
        "model": cfg.model.name_or_path,
        "validation_conversations": len(prompts),
        "prompt_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "eval_batch_size": cfg.eval.batch_size,
        "max_new_tokens": cfg.generate.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
    }
    print("loss pass", flush=True)
    payload["loss_pass"] = time_loss(task, model, accelerator)
    print("untuned", flush=True)
    with accelerator.autocast():
        payload["untuned"] = time_paths(model, tokenizer, prompts, gen_cfg, cfg.eval.batch_size)
    if args.run:
        del model
        loaded = load_run(args.run)
        print("tuned", flush=True)
        with loaded.autocast():
            payload["tuned"] = time_paths(loaded.model, tokenizer, prompts, gen_cfg, cfg.eval.batch_size)
    results = write_results(Path(args.out), payload, precision=auto_precision())
    for case in ("untuned", "tuned"):
        if case in results:
            old, new = results[case]["old"]["seconds"], results[case]["new"]["seconds"]
            print(f"{case}: old {old} s, new {new} s ({results[case]['speedup']}x)")


if __name__ == "__main__":
    main()
