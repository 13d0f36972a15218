"""``glmtune``'s argparse parser: every command, flag and help text, each command bound to its function.

Only argparse and the light command modules are imported here, so ``glmtune --help`` is instant.
"""

from __future__ import annotations

import argparse

from glmtune import __version__
from glmtune.cli import kb
from glmtune.cli.data import cmd_data, cmd_models
from glmtune.cli.env import cmd_env
from glmtune.cli.explain import cmd_explain
from glmtune.cli.inference import cmd_chat, cmd_ensemble, cmd_eval, cmd_export, cmd_predict, cmd_serve
from glmtune.cli.prune import add_parser as add_prune_parser
from glmtune.cli.training import cmd_train, cmd_tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glmtune",
        description="Fine-tune ChatGLM3 and any Hugging Face causal LM, evaluate it, deploy it.",
    )
    parser.add_argument("--version", action="version", version=f"glmtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model: glmtune train CONFIG.yaml [key=value ...]")
    p.add_argument("args", nargs="*", help="CONFIG.yaml then dotted overrides like train.lr=2e-4")
    p.add_argument("--output", help="run folder (default: runs/<config name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run folder")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a killed run from its last intact checkpoint"
    )
    p.add_argument(
        "--trust-run",
        action="store_true",
        help="--resume: also load a checkpoint of the older layout, whose pickle files (*.pkl, *.bin) can run "
        "any code they hold: only for a run folder you made yourself or fully trust (default: refused)",
    )
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_DIR",
        help="continue from a finished run's weights on new data (sets model.from_run; docs/retrain.md)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run on its test split or a labelled/conversation file")
    p.add_argument("run_dir")
    p.add_argument("--data", help="a labelled file (classification) or conversations (sft), as in training")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict", help="label texts (classification) or reply to prompts (sft) with a trained run"
    )
    p.add_argument("run_dir")
    p.add_argument("--text", help="one text: prints a JSON object (label and probs, or the reply)")
    p.add_argument(
        "--input",
        help="a file of texts (JSONL/CSV/...; sft: messages, prompt, text or instruction): writes JSONL",
    )
    p.add_argument("--output", help="where --input predictions go (default: INPUT.predictions.jsonl)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("chat", help="talk to an sft run or a model in the terminal (streamed, multi-turn)")
    p.add_argument("run_or_model", help="an sft run folder, a built-in model name or an HF model folder")
    p.add_argument("--system", help="a system message for the whole conversation")
    p.add_argument("--template", help="chat template for a bare model (default: auto)")
    p.add_argument("--max-new-tokens", type=int, help="reply length limit (default: the run's generate.*)")
    p.add_argument("--sample", action=argparse.BooleanOptionalAction, default=None, help="sample (or greedy)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--max-context", type=int, help="tokens of history + reply (default: the model's)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "ensemble", help="combine classification runs (vote, mean, weights fit on validation) and evaluate"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more classification runs")
    p.add_argument("--method", choices=["vote", "mean", "weighted"], default="mean")
    p.add_argument("--out", required=True, help="the ensemble's output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("export", help="a run → a standalone model folder: merged, CPU int8, or GGUF")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the new export folder (never overwritten)")
    p.add_argument("--merge", action="store_true", help="fold LoRA/freeze/full weights into one model folder")
    p.add_argument("--quantize", metavar="MODE", help="int8: CPU int8 Linear weights (implies --merge)")
    p.add_argument("--gguf", action="store_true", help="a GGUF file + Ollama Modelfile (llama.cpp, Ollama)")
    p.add_argument("--quant", metavar="TYPE", help="--gguf tensor type: f16 (default), q8_0, bf16, f32")
    p.add_argument("--data", help="--quantize: measure quality on this file instead of the run's test split")
    p.set_defaults(func=cmd_export)
    add_prune_parser(sub)  # glmtune prune: its flags live beside the command (cli/prune.py)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over runs and models")
    p.add_argument("targets", nargs="+", metavar="RUN_DIR|MODEL", help="runs (sft, classification) or models")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $GLMTUNE_API_KEY if set)")
    p.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        action="append",
        help="Host header names answered besides localhost, 127.0.0.1, [::1] and --host (comma-separated; "
        "'*' any, '*.example.com' subdomains): other names get 400, which stops DNS rebinding",
    )
    p.add_argument("--template", help="chat template for a bare model (default: auto)")
    p.add_argument("--max-tokens", type=int, default=1024, help="ceiling on a request's max_tokens")
    p.add_argument("--max-messages", type=int, default=128, help="messages per chat request")
    p.add_argument("--max-inputs", type=int, default=64, help="texts per classify, prompts per completions")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size limit")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queueing included")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests generated together in one batch")
    p.add_argument("--batch-wait-ms", type=float, default=50.0, help="wait for company in a batch (ms)")
    p.add_argument("--metrics-public", action="store_true", help="GET /metrics without the API key")
    p.add_argument("--log-content", action="store_true", help="prompts and replies in the JSON access log")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tune", help="hyper-parameter search (Optuna) over the config's tune.space")
    p.add_argument("args", nargs="*", help="CONFIG.yaml (with a tune: section) then dotted overrides")
    p.add_argument("--trials", type=int, help="how many trials in all (default: tune.trials)")
    p.add_argument("--out", help="the tune folder (default: runs/<config name>-tune)")
    p.add_argument("--resume", metavar="TUNE_DIR", help="continue a killed search")
    p.set_defaults(func=cmd_tune)

    kb.add_parser(sub)

    p = sub.add_parser("models", help="list built-in models")
    p.add_argument("--cache-dir", help="the built-in model cache to inspect")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "data", help="built-in datasets; inspect sft encoding; preview data.augment, data.redact"
    )
    p.add_argument("action", choices=["list", "inspect", "augment", "redact"])
    p.add_argument("config", nargs="?", help="inspect: the sft config; augment/redact: the config")
    p.add_argument(
        "overrides", nargs="*", help="inspect/augment/redact: dotted overrides like data.template=chatml"
    )
    p.add_argument("--n", type=int, default=3, help="inspect: how many training conversations to show")
    p.add_argument(
        "--preview",
        type=int,
        nargs="?",
        const=5,
        default=5,
        metavar="N",
        help="augment: show the first N training examples beside their augmented copies; redact: the first N "
        "examples with something replaced, before and after (default 5)",
    )
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "explain", help="why a run answered: token attributions (classification), reply log-probs (sft)"
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--text", help="one text (sft: the user's message): prints it coloured, writes HTML/PNG/JSONL"
    )
    p.add_argument("--input", help="a file of texts (sft: prompts, or conversations ending with the reply)")
    p.add_argument("--label", help="classification: attribute toward this label (default: the predicted one)")
    p.add_argument(
        "--reply", help="sft/preference, with --text: score this reply (default: the run generates one)"
    )
    p.add_argument("--steps", type=int, help="integrated-gradients steps (default 256)")
    p.add_argument("--out", help="where the files go (default: RUN/explain/)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("env", help="this machine's facts for a bug report: versions, CPU, threads, precision")
    p.add_argument("--json", action="store_true", help="one JSON object instead of '- key: value' lines")
    p.add_argument("--no-probe", action="store_true", help="skip the one-second fp32/bf16 matmul probe")
    p.set_defaults(func=cmd_env)
    return parser


__all__ = ["build_parser"]
