"""`glmtune train|eval|predict|models|data`: command names → plain functions.

Heavy imports (torch, transformers) live inside the functions so ``glmtune --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glmtune import __version__
from glmtune.errors import UserError, user_errors_exit


def cmd_train(args: argparse.Namespace) -> None:
    from glmtune import config, train

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
    from glmtune import classify, data, evaluate
    from glmtune.runs import atomic_write_json

    loaded = classify.load_run(args.run_dir)
    cfg = loaded.cfg
    if args.data:
        examples = data.load_labelled_file(
            args.data, cfg.data.text_column, cfg.data.label_column, loaded.labels
        )
        name = Path(args.data).stem
    else:
        examples = data.load_classification(cfg.data).test
        name = "test"
    probs = classify.predict_texts(loaded, [e.text for e in examples])
    gold = [e.label for e in examples]
    metrics = evaluate.classification_metrics(gold, probs.numpy(), loaded.labels)
    out = loaded.run.path / "eval" / name
    atomic_write_json(out / "metrics.json", metrics)
    rows = evaluate.prediction_rows([e.text for e in examples], gold, probs.numpy(), loaded.labels)
    evaluate.write_predictions(out / "predictions.jsonl", rows)
    evaluate.plot_confusion(metrics["confusion_matrix"], loaded.labels, out / "confusion.png")
    print(evaluate.format_metrics_table({name: metrics}))
    print(out)


def cmd_predict(args: argparse.Namespace) -> None:
    from glmtune import classify, data
    from glmtune.runs import atomic_write_jsonl

    if (args.text is None) == (args.input is None):
        raise UserError(
            "give exactly one of --text and --input", expected="--text 'a review' or --input FILE"
        )
    loaded = classify.load_run(args.run_dir)
    if args.text is not None:
        probs = classify.predict_texts(loaded, [args.text])
        print(json.dumps(classify.prediction(probs[0], loaded.labels), ensure_ascii=False))
        return
    column = loaded.cfg.data.text_column
    records = data.read_records(args.input)
    data.require_columns(records, [column], args.input)
    texts = [str(r[column]) for r in records]
    probs = classify.predict_texts(loaded, texts)
    output = Path(args.output) if args.output else Path(args.input).with_suffix(".predictions.jsonl")
    atomic_write_jsonl(
        output, ({"text": t, **classify.prediction(p, loaded.labels)} for t, p in zip(texts, probs))
    )
    print(output)


def cmd_models(args: argparse.Namespace) -> None:
    from glmtune.models import list_models

    for row in list_models(args.cache_dir):
        print("  ".join(f"{k}={v}" for k, v in row.items()))


def cmd_data(args: argparse.Namespace) -> None:
    from glmtune.data import list_datasets

    for row in list_datasets():
        print("  ".join(f"{k}={v}" for k, v in row.items()))


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

    p = sub.add_parser("eval", help="evaluate a run on its test split or a labelled file")
    p.add_argument("run_dir")
    p.add_argument("--data", help="a labelled file (same text/label columns as training)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="label texts with a trained run")
    p.add_argument("run_dir")
    p.add_argument("--text", help="one text: prints a JSON object with label and probs")
    p.add_argument("--input", help="a file of texts (JSONL/CSV/...): writes JSONL predictions")
    p.add_argument("--output", help="where --input predictions go (default: INPUT.predictions.jsonl)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list built-in models")
    p.add_argument("--cache-dir", help="the built-in model cache to inspect")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="built-in datasets")
    p.add_argument("action", choices=["list"])
    p.set_defaults(func=cmd_data)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # Overrides may follow options (`train cfg.yaml --output d train.lr=1e-4`): argparse leaves them over.
    if args.command == "train" and all("=" in u and not u.startswith("-") for u in unknown):
        args.args += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
