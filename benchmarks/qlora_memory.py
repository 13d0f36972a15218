"""Memory of a built-in model loaded fp32, bf16, bitsandbytes 8-bit and 4-bit (NF4, double quantization), on CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qlora_memory.py                        # smollm2-135m-instruct
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qlora_memory.py --model gemma3-270m

Each precision loads in its own process through glmtune's loader (``model.quantization`` / ``model.dtype``), so
the peak resident memory (``ru_maxrss``: loading included) of one does not hide another's. Also written: the
model's own weight bytes (``get_memory_footprint``: parameters + buffers, the quantization constants included),
and the LM loss on a fixed text, to show what the rounding costs. The LM output layer stays in the load dtype
under bitsandbytes (transformers never quantizes it); tied to the embeddings in SmolLM2 and Gemma 3.
Results: benchmarks/results/qlora_memory.json, one entry per model.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "qlora_memory.json"
MODES = {  # name: model-config overrides
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "8bit": {"dtype": "bfloat16", "quantization": "8bit"},
    "4bit-nf4": {"dtype": "bfloat16", "quantization": "4bit", "quant_type": "nf4", "double_quant": True},
}
TEXT = (
    "用户：这家店的服务怎么样？\n助手：服务很好，物流也快，下次还会再来。The staff were friendly and helpful."
)
MiB = 2**20


def measure(model_name: str, mode: str) -> dict:
    """Load ``model_name`` in ``mode`` (this process only), then one forward pass on ``TEXT``."""
    import torch

    from glmtune.core import config as config_mod
    from glmtune.models.load import load_causal_lm, load_tokenizer

    torch.set_num_threads(1)
    cfg = config_mod.from_dict({"task": "sft", "model": {"name_or_path": model_name, **MODES[mode]}}).model
    tokenizer = load_tokenizer(cfg)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    model = load_causal_lm(cfg).eval()
    load_s = time.perf_counter() - start
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]  # [1, seq]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gc.collect()
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()  # resident now
    linear_kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
    return {
        "mode": mode,
        "model_config": MODES[mode],
        "weights_mib": round(model.get_memory_footprint() / MiB, 1),
        "rss_after_load_mib": round(rss / MiB, 1),
        "peak_rss_mib": round(peak / MiB, 1),
        "peak_rss_before_load_mib": round(before / MiB, 1),
        "load_s": round(load_s, 2),
        "loss_on_fixed_text": round(loss, 4),
        "tokens": ids.shape[1],
        "linear_classes": linear_kinds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name or a model folder")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.child)))
        return
    rows = []
    for mode in MODES:  # one process each, one after the other (never two torch processes at once)
        cmd = [sys.executable, __file__, "--model", args.model, "--child", mode]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    fp32 = rows[0]
    for row in rows:
        row["weights_vs_fp32"] = round(row["weights_mib"] / fp32["weights_mib"], 3)
        row["loss_delta_vs_fp32"] = round(row["loss_on_fixed_text"] - fp32["loss_on_fixed_text"], 4)
    import bitsandbytes
    import torch

    result = {
        "model": args.model,
        "device": "cpu",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "cuda": torch.cuda.is_available(),
        "command": f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qlora_memory.py --model {args.model}",
        "rows": rows,
    }
    from harness import hardware_block  # benchmarks/ is on sys.path: this script's own folder

    from glmtune.core.runs import atomic_write_json

    # One entry per model measured, each with its own machine and precision (entries may come from different runs).
    result["precision"] = "per row: the weights' format (mode); the forward pass in that dtype"
    result["hardware"] = hardware_block()
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    results[args.model] = result
    atomic_write_json(args.out, results)
    print(args.out)


if __name__ == "__main__":
    main()
