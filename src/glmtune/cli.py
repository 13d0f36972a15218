"""`glmtune train|eval|predict|chat|models|data`: command names → plain functions.

Heavy imports (torch, transformers) live inside the functions so ``glmtune --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glmtune import __version__
from glmtune.core.errors import UserError, user_errors_exit


def cmd_train(args: argparse.Namespace) -> None:
    from glmtune import train
    from glmtune.core import config

    positional = list(args.args)
    config_path = positional.pop(0) if positional and "=" not in positional[0] else None
    if args.resume:
        if config_path or positional:
            raise UserError(
                "--resume continues a run with its saved config",
                field="train",
                expected="glmtune train --resume RUN_DIR (no config or overrides)",
            )
        output = Path(args.resume)
        cfg = None
    else:
        if config_path is None and not positional:
            raise UserError("no config given", expected="glmtune train CONFIG.yaml [key=value ...]")
        cfg = config.load(config_path, positional)
        output = Path(args.output) if args.output else train.default_output(config_path)
    run_dir = train.run(cfg, output, overwrite=args.overwrite, resume=bool(args.resume))
    print(run_dir)


def cmd_eval(args: argparse.Namespace) -> None:
    from glmtune import data
    from glmtune import metrics as evaluation
    from glmtune.core.runs import atomic_write_json
    from glmtune.infer import classifier

    if _run_task(args.run_dir) == "sft":
        eval_sft(args)
        return
    loaded = classifier.load_run(args.run_dir)
    cfg = loaded.cfg
    if args.data:
        examples = data.load_labelled_file(
            args.data, cfg.data.text_column, cfg.data.label_column, loaded.labels
        )
        name = Path(args.data).stem
    else:
        examples = data.load_classification(cfg.data).test
        name = "test"
    probs = classifier.predict_texts(loaded, [e.text for e in examples])
    gold = [e.label for e in examples]
    metrics = evaluation.classification_metrics(gold, probs.numpy(), loaded.labels)
    out = loaded.run.path / "eval" / name
    atomic_write_json(out / "metrics.json", metrics)
    rows = evaluation.prediction_rows([e.text for e in examples], gold, probs.numpy(), loaded.labels)
    evaluation.write_predictions(out / "predictions.jsonl", rows)
    evaluation.plot_confusion(metrics["confusion_matrix"], loaded.labels, out / "confusion.png")
    print(evaluation.format_metrics_table({name: metrics}))
    print(out)


def eval_sft(args: argparse.Namespace) -> None:
    """An SFT run on its test split or a conversation file: eval/NAME/metrics.json and predictions.jsonl."""
    from glmtune import metrics as evaluation
    from glmtune.core.runs import atomic_write_json, atomic_write_jsonl
    from glmtune.data.conversation import load_conversations
    from glmtune.data.sft import load_sft
    from glmtune.infer import lm
    from glmtune.train.tasks.sft import TABLE_ROWS

    loaded = lm.load_run(args.run_dir)
    if args.data:
        conversations, name = load_conversations(args.data, loaded.cfg.data.format), Path(args.data).stem
    else:
        conversations, name = load_sft(loaded.cfg.data).test, "test"
    if not conversations:
        raise UserError("no conversations to evaluate", file=args.data, expected="at least one")
    metrics, rows = lm.evaluate_conversations(loaded, conversations)
    out = loaded.run.path / "eval" / name
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    print(evaluation.format_metrics_table({name: metrics}, TABLE_ROWS))
    print(out)


def _run_task(run_dir: str) -> str:
    """The task of a run folder (from its glmtune.json), checked before anything heavy loads."""
    from glmtune.core.runs import RunDir

    return RunDir(run_dir).check(need_weights=True).get("task", "classification")


def cmd_predict(args: argparse.Namespace) -> None:
    from glmtune import data
    from glmtune.core.runs import atomic_write_jsonl
    from glmtune.infer import classifier

    if (args.text is None) == (args.input is None):
        raise UserError(
            "give exactly one of --text and --input", expected="--text 'a review' or --input FILE"
        )
    exported = _load_export(args.run_dir)  # a `glmtune export` folder, else None (a run folder)
    task = exported.cfg.task if exported is not None else _run_task(args.run_dir)
    if task == "sft":
        predict_sft(args, exported)
        return
    loaded = exported if exported is not None else classifier.load_run(args.run_dir)
    if args.text is not None:
        probs = classifier.predict_texts(loaded, [args.text])
        print(json.dumps(classifier.prediction(probs[0], loaded.labels), ensure_ascii=False))
        return
    column = loaded.cfg.data.text_column
    records = data.read_records(args.input)
    data.require_columns(records, [column], args.input)
    texts = [str(r[column]) for r in records]
    probs = classifier.predict_texts(loaded, texts)
    output = Path(args.output) if args.output else Path(args.input).with_suffix(".predictions.jsonl")
    atomic_write_jsonl(
        output, ({"text": t, **classifier.prediction(p, loaded.labels)} for t, p in zip(texts, probs))
    )
    print(output)


def predict_sft(args: argparse.Namespace, loaded=None) -> None:
    """Replies of an SFT run: ``--text`` prints one JSON object; ``--input`` writes JSONL (with a progress bar)."""
    from glmtune.core.runs import atomic_write_jsonl
    from glmtune.data.conversation import Conversation, Message
    from glmtune.infer import lm

    loaded = loaded if loaded is not None else lm.load_run(args.run_dir)
    if args.text is not None:
        row = lm.reply_all(loaded, [Conversation([Message("user", args.text)])])[0]
        print(json.dumps(row, ensure_ascii=False))
        return
    prompts = lm.read_prompts(args.input)
    rows = lm.reply_all(loaded, prompts, progress=True)
    output = Path(args.output) if args.output else Path(args.input).with_suffix(".predictions.jsonl")
    atomic_write_jsonl(output, rows)
    print(output)


def cmd_chat(args: argparse.Namespace) -> None:
    from glmtune.infer import chat, lm

    loaded = _load_export(args.run_or_model) or lm.load(args.run_or_model, args.template)
    overrides = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(loaded.cfg.generate, key, value)
    if args.sample is not None:
        loaded.cfg.generate.do_sample = args.sample
    loaded.cfg.generate.__post_init__()  # the same checks as in a config file
    chat.run_chat(loaded, system=args.system, max_context=args.max_context)


def _load_export(path: str):
    """A `glmtune export` folder loaded for predict/chat (merged or int8 weights), or None for anything else."""
    from glmtune.infer import export

    return export.load_export(path) if export.is_export(path) else None


def cmd_export(args: argparse.Namespace) -> None:
    from glmtune.infer import export

    out = export.export(
        args.run_dir,
        args.out,
        merge_weights=args.merge,
        quantize=args.quantize,
        gguf=args.gguf,
        data=args.data,
    )
    print(out)


def cmd_ensemble(args: argparse.Namespace) -> None:
    from glmtune.infer import ensemble

    print(ensemble.run(args.run_dirs, args.method, args.out, overwrite=args.overwrite))


def cmd_serve(args: argparse.Namespace) -> None:
    from glmtune.infer.serve import serve
    from glmtune.infer.serve.app import Limits

    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        max_messages=args.max_messages,
        max_inputs=args.max_inputs,
        timeout_s=args.timeout,
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
    )
    options = dict(host=args.host, port=args.port, api_key=args.api_key, template=args.template)
    serve(args.targets, limits=limits, **options)


def cmd_tune(args: argparse.Namespace) -> None:
    from glmtune import train
    from glmtune.core import config
    from glmtune.train import search

    positional = list(args.args)
    config_path = positional.pop(0) if positional and "=" not in positional[0] else None
    if args.resume:
        if config_path or positional or args.out:
            raise UserError(
                "--resume continues a search with its saved config",
                field="tune",
                expected="glmtune tune --resume TUNE_DIR [--trials N]",
            )
        print(search.run(None, args.resume, trials=args.trials, resume=True))
        return
    if config_path is None:
        raise UserError("no config given", expected="glmtune tune CONFIG.yaml [key=value ...] --trials N")
    cfg = config.load(config_path, positional)
    default = train.default_output(config_path)
    out = Path(args.out) if args.out else default.with_name(default.name + "-tune")
    print(search.run(cfg, out, trials=args.trials, source=config_path))


def cmd_models(args: argparse.Namespace) -> None:
    from glmtune.models import list_models

    for row in list_models(args.cache_dir):
        print("  ".join(f"{k}={v}" for k, v in row.items()))


def cmd_data(args: argparse.Namespace) -> None:
    if args.action == "inspect":
        inspect_data(args)
        return
    if args.action == "augment":
        preview_augment(args)
        return
    from glmtune.data import list_datasets

    for row in list_datasets():
        print("  ".join(f"{k}={v}" for k, v in row.items()))


def preview_augment(args: argparse.Namespace) -> None:
    """The first training examples of a config beside their ``data.augment`` copies (nothing is written)."""
    from glmtune.core import config
    from glmtune.data.augment import preview
    from glmtune.train.techniques.backtranslate import translator_for

    if args.config is None:
        raise UserError(
            "no config given", expected="glmtune data augment CONFIG.yaml [key=value ...] --preview [N]"
        )
    cfg = config.load(args.config, args.overrides)
    for line in preview(cfg, args.preview, translator_for(cfg.data.augment)):
        print(line)


def inspect_data(args: argparse.Namespace) -> None:
    """The first training conversations of an SFT config as the model sees them, learned tokens highlighted."""
    from glmtune.core import config
    from glmtune.data.sft import load_sft
    from glmtune.data.templates import encode_conversation, render_mask
    from glmtune.infer.lm import resolve_template
    from glmtune.models.load import load_tokenizer

    if args.config is None:
        raise UserError("no config given", expected="glmtune data inspect CONFIG.yaml [--n 3]")
    cfg = config.load(args.config, args.overrides)
    if cfg.task != "sft":
        raise UserError(f"got task {cfg.task}", field="task", expected="sft (inspect shows chat templates)")
    conversations = load_sft(cfg.data).train[: args.n]
    tokenizer = load_tokenizer(cfg.model)
    fmt = resolve_template(tokenizer, cfg.data.template)
    color = sys.stdout.isatty()
    for number, conv in enumerate(conversations, 1):
        encoded = encode_conversation(
            tokenizer, conv, fmt, max_seq_len=cfg.train.max_seq_len, train_on_prompt=cfg.data.train_on_prompt
        )
        learned = sum(label != -100 for label in encoded.labels)
        state = " · dropped (too long)" if encoded.dropped else " · truncated" if encoded.truncated else ""
        print(
            f"--- {number}: {conv.source}:{conv.line} · {len(encoded.input_ids)} tokens, {learned} learned{state}"
        )
        print(render_mask(tokenizer, encoded.input_ids, encoded.labels, color=color))
    legend = "learned tokens in bold green" if color else "learned tokens in «»"
    print(f"--- template {fmt.name} · {legend}")


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
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
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

    p = sub.add_parser("export", help="a run → a standalone model folder: merged, or CPU int8")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the new export folder (never overwritten)")
    p.add_argument("--merge", action="store_true", help="fold LoRA/freeze/full weights into one model folder")
    p.add_argument("--quantize", metavar="MODE", help="int8: CPU int8 Linear weights (implies --merge)")
    p.add_argument("--gguf", action="store_true", help="GGUF (not supported; see README)")
    p.add_argument("--data", help="--quantize: measure quality on this file instead of the run's test split")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over runs and models")
    p.add_argument("targets", nargs="+", metavar="RUN_DIR|MODEL", help="runs (sft, classification) or models")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $GLMTUNE_API_KEY if set)")
    p.add_argument("--template", help="chat template for a bare model (default: auto)")
    p.add_argument("--max-tokens", type=int, default=1024, help="ceiling on a request's max_tokens")
    p.add_argument("--max-messages", type=int, default=128, help="messages per chat request")
    p.add_argument("--max-inputs", type=int, default=64, help="texts per classify, prompts per completions")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size limit")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queueing included")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests generated together in one batch")
    p.add_argument("--batch-wait-ms", type=float, default=50.0, help="wait for company in a batch (ms)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tune", help="hyper-parameter search (Optuna) over the config's tune.space")
    p.add_argument("args", nargs="*", help="CONFIG.yaml (with a tune: section) then dotted overrides")
    p.add_argument("--trials", type=int, help="how many trials in all (default: tune.trials)")
    p.add_argument("--out", help="the tune folder (default: runs/<config name>-tune)")
    p.add_argument("--resume", metavar="TUNE_DIR", help="continue a killed search")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("models", help="list built-in models")
    p.add_argument("--cache-dir", help="the built-in model cache to inspect")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="built-in datasets; inspect sft encoding; preview data.augment")
    p.add_argument("action", choices=["list", "inspect", "augment"])
    p.add_argument("config", nargs="?", help="inspect: the sft config; augment: the config")
    p.add_argument("overrides", nargs="*", help="inspect/augment: dotted overrides like data.template=chatml")
    p.add_argument("--n", type=int, default=3, help="inspect: how many training conversations to show")
    p.add_argument(
        "--preview",
        type=int,
        nargs="?",
        const=5,
        default=5,
        metavar="N",
        help="augment: show the first N training examples beside their augmented copies (default 5)",
    )
    p.set_defaults(func=cmd_data)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # Overrides may follow options (`train cfg.yaml --output d train.lr=1e-4`): argparse leaves them over.
    if args.command in ("train", "tune") and all("=" in u and not u.startswith("-") for u in unknown):
        args.args += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
