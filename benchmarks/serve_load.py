"""Load on ``glmtune serve``: N concurrent streaming chat clients against the server on loopback, batched versus
one request at a time, in the same run.

Both phases start the real server (``python -m glmtune.cli serve MODEL --port 0``, its own process) with the same
model and limits; the only difference is ``--max-batch-size``: N (batching) against 1 (the baseline: requests
run one after another, as a server with a lock around ``generate`` would). The same clients send the same fixed,
bounded list of requests (greedy, so both phases generate the same tokens) with the official ``openai`` client,
streaming, and measure per request the latency and the time to the first text; one warm-up request per phase
is not counted. Reports requests/s, generated tokens/s (``usage.completion_tokens`` over the phase's wall time),
p50/p95 latency and time to first token, failures, and the batched/baseline tokens/s ratio.

    .venv/bin/python benchmarks/serve_load.py [--model smollm2-135m-instruct] [--clients 8] [--requests 48]
        [--max-tokens 64] [--threads N]

Measure on a quiet machine: other processes competing for the cores make both phases slow and noisy (torch's
threads spin while they wait for a core).

Writes benchmarks/results/serve_load.json (``--out`` to change), with the machine (``harness.write_results``).
Exit code 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "Explain what a neural network is in two sentences.",
    "Write a haiku about autumn rain.",
    "How do I boil an egg?",
    "What are the primary colors?",
    "Name a few uses of a paperclip.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "What should I pack for a weekend hiking trip?",
    "How does a bicycle stay upright?",
    "Suggest a name for a friendly robot.",
]


def start_server(args: argparse.Namespace, batch_size: int) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "glmtune.cli", "serve", args.model, "--port", "0",
        "--max-batch-size", str(batch_size), "--max-tokens", str(args.max_tokens),
        "--max-queue", str(max(64, args.clients * 2)), "--timeout", "3600",
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if not line.startswith("glmtune: serving"):
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, line.split(" on ")[1].split()[0]


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()


async def one_request(api: Any, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - started
    return {"latency": latency, "ttft": latency if first is None else first, "tokens": tokens}


async def load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """``args.requests`` requests from ``args.clients`` concurrent clients; the phase's measurements."""
    from openai import AsyncOpenAI

    api = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    model = (await api.models.list()).data[0].id
    await one_request(api, model, PROMPTS[0], args.max_tokens)  # warm-up, not counted
    pending = iter(range(args.requests))
    done: list[dict[str, float]] = []
    failures: list[str] = []

    async def client() -> None:
        for index in pending:
            try:
                done.append(await one_request(api, model, PROMPTS[index % len(PROMPTS)], args.max_tokens))
            except Exception as error:  # noqa: BLE001 - counted and reported
                failures.append(repr(error))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.perf_counter() - started
    await api.close()
    latency = np.array([d["latency"] for d in done] or [np.nan])
    ttft = np.array([d["ttft"] for d in done] or [np.nan])
    tokens = sum(int(d["tokens"]) for d in done)
    return {
        "requests": len(done),
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": round(wall, 3),
        "requests_per_s": round(len(done) / wall, 3),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(float(np.percentile(latency, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latency, 95)), 3),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3),
        "ttft_p95_s": round(float(np.percentile(ttft, 95)), 3),
    }


def phase(args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    process, url = start_server(args, batch_size)
    try:
        result = asyncio.run(load(url, args))
    finally:
        stop_server(process)
    result["max_batch_size"] = batch_size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="built-in name, HF folder or run folder"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=48, help="requests per phase (fixed, bounded)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the server (default: torch's own)")
    parser.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = parser.parse_args()

    batched = phase(args, args.clients)
    print("batched  ", json.dumps(batched), flush=True)
    baseline = phase(args, 1)
    print("baseline ", json.dumps(baseline), flush=True)
    ratio = batched["tokens_per_s"] / baseline["tokens_per_s"] if baseline["tokens_per_s"] else float("nan")
    report = {
        "model": args.model,
        "clients": args.clients,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "batched": batched,
        "baseline_one_at_a_time": baseline,
        "tokens_per_s_ratio": round(ratio, 2),
        "failed": batched["failed"] + baseline["failed"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "server_threads": args.threads},
        "command": "benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    from harness import auto_precision, write_results  # benchmarks/ is on sys.path: this script's own folder

    precision = "bf16" if auto_precision() == "bf16" else "fp32"  # the server's: glmtune's auto, like any run
    write_results(out, report, precision=precision)
    print(
        f"tokens/s batched {batched['tokens_per_s']} vs one at a time {baseline['tokens_per_s']}: {ratio:.2f}x"
    )
    print(out)
    if report["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
