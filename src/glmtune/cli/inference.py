"""Using a trained run: ``glmtune eval|predict|chat|serve|export|ensemble``.

Each command checks its run (or ``glmtune export`` folder) before anything heavy loads, dispatches on the run's
task (classification or sft), and prints what it wrote or answers. Heavy imports live inside the functions so
``glmtune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glmtune.core.config.choices import CAUSAL_TASKS
from glmtune.core.errors import UserError


def cmd_eval(args: argparse.Namespace) -> None:
    from glmtune import data
    from glmtune import metrics as evaluation
    from glmtune.core.runs import atomic_write_json
    from glmtune.data.classification import read_labelled_file
    from glmtune.infer import classifier

    task = _run_task(args.run_dir)
    if task == "sft":
        eval_sft(args)
        return
    if task == "preference":
        eval_preference(args)
        return
    loaded = classifier.load_run(args.run_dir)
    cfg = loaded.cfg
    if args.data:  # read as training read its files: data.columns, data.encoding, data.sheet
        examples, name = read_labelled_file(args.data, cfg.data, loaded.labels), Path(args.data).stem
    else:
        examples = data.load_classification(cfg.data).test
        name = "test"
    gold = [e.label for e in examples]
    probs, loss = classifier.evaluate_texts(loaded, [e.text for e in examples], gold)
    metrics = evaluation.classification_metrics(gold, probs.numpy(), loaded.labels, loss=loss)
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
    from glmtune.data.sft import load_sft, read_file
    from glmtune.data.summary import SplitCounts, counts_table
    from glmtune.infer import lm
    from glmtune.train.tasks.sft import TABLE_ROWS

    loaded = lm.load_run(args.run_dir)
    if args.data:  # read as training read its files: data.format, data.columns, data.encoding, data.sheet
        conversations, name = read_file(args.data, loaded.cfg.data), Path(args.data).stem
    else:
        conversations, name = load_sft(loaded.cfg.data).test, "test"
    if not conversations:
        raise UserError("no conversations to evaluate", file=args.data, expected="at least one")
    counts = SplitCounts(read=len(conversations))
    metrics, rows = lm.evaluate_conversations(loaded, conversations, counts=counts)
    print(counts_table({name: counts}))
    out = loaded.run.path / "eval" / name
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    print(evaluation.format_metrics_table({name: metrics}, TABLE_ROWS))
    print(out)


def eval_preference(args: argparse.Namespace) -> None:
    """A preference run on its test split or a file of pairs: eval/NAME/metrics.json (reward accuracy, margin…)."""
    from glmtune import metrics as evaluation
    from glmtune.train.tasks.preference import TABLE_ROWS, evaluate_file

    name, metrics, out = evaluate_file(args.run_dir, args.data)
    print(evaluation.format_metrics_table({name: metrics}, TABLE_ROWS))
    print(out)


def _run_task(run_dir: str) -> str:
    """The task of a run folder (from its glmtune.json), checked before anything heavy loads."""
    from glmtune.core.runs import RunDir

    return RunDir(run_dir).check(need_weights=True).get("task", "classification")


def cmd_predict(args: argparse.Namespace) -> None:
    from glmtune import data
    from glmtune.core.runs import atomic_write_jsonl
    from glmtune.data.classification import text_label_columns
    from glmtune.infer import classifier

    if (args.text is None) == (args.input is None):
        raise UserError(
            "give exactly one of --text and --input", expected="--text 'a review' or --input FILE"
        )
    exported = _load_export(args.run_dir)  # a `glmtune export` folder, else None (a run folder)
    task = exported.cfg.task if exported is not None else _run_task(args.run_dir)
    if task in CAUSAL_TASKS:
        predict_sft(args, exported)
        return
    loaded = exported if exported is not None else classifier.load_run(args.run_dir)
    if args.text is not None:
        probs = classifier.predict_texts(loaded, [args.text])
        print(json.dumps(classifier.prediction(probs[0], loaded.labels), ensure_ascii=False))
        return
    column = text_label_columns(loaded.cfg.data)[0]  # read as training read its files
    records = data.read_records(args.input, encoding=loaded.cfg.data.encoding, sheet=loaded.cfg.data.sheet)
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
    prompts = lm.read_prompts(args.input, loaded.cfg.data)
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
        quant=args.quant,
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
    monitoring = dict(metrics_public=args.metrics_public, log_content=args.log_content)
    serve(args.targets, limits=limits, allowed_hosts=args.allowed_hosts, **options, **monitoring)


__all__ = ["cmd_chat", "cmd_ensemble", "cmd_eval", "cmd_export", "cmd_predict", "cmd_serve"]
