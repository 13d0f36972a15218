"""``glmtune explain RUN --text … | --input FILE``: why a run answered as it did (``infer.explain``).

Classification runs: token attributions toward the predicted label (or ``--label``). SFT and preference runs:
the per-token log-probabilities of a reply (``--reply``, or one the run generates). ``--text`` prints the
coloured text (plain lines when not a terminal or with NO_COLOR) and writes NAME.html, NAME.png and NAME.jsonl;
``--input`` writes one HTML page and one JSONL line per text. Files go to ``--out`` (default RUN/explain/).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glmtune.core.config.choices import CAUSAL_TASKS
from glmtune.core.errors import UserError


def cmd_explain(args: argparse.Namespace) -> None:
    from glmtune.core.runs import RunDir

    if (args.text is None) == (args.input is None):
        raise UserError(
            "give exactly one of --text and --input", expected="--text 'a review' or --input FILE"
        )
    task = RunDir(args.run_dir).check(need_weights=True).get("task", "classification")
    causal = task in CAUSAL_TASKS
    if causal and args.label is not None:
        raise UserError(
            f"--label is for classification runs, this is a {task} run",
            field="--label",
            expected="no --label",
        )
    if not causal and args.reply is not None:
        raise UserError("--reply is for sft and preference runs", field="--reply", expected="no --reply")
    if args.input is not None and args.reply is not None:
        raise UserError(
            "--reply goes with --text",
            field="--reply",
            expected="--text; in a file, conversations ending with the reply",
        )
    out = Path(args.out) if args.out else Path(args.run_dir) / "explain"
    explanations, name = (_explain_causal if causal else _explain_labels)(args)
    write(explanations, out, name, png=args.text is not None)


def _explain_labels(args: argparse.Namespace) -> tuple[list[Any], str]:
    from glmtune import data
    from glmtune.data.classification import text_label_columns
    from glmtune.infer import classifier, explain

    loaded = classifier.load_run(args.run_dir)
    if args.text is not None:
        texts, name = [args.text], explain.short_name(args.text, args.label)
    else:  # read as training read its files: data.columns, data.encoding, data.sheet
        column = text_label_columns(loaded.cfg.data)[0]
        records = data.read_records(
            args.input, encoding=loaded.cfg.data.encoding, sheet=loaded.cfg.data.sheet
        )
        data.require_columns(records, [column], args.input)
        texts, name = [str(r[column]) for r in records], Path(args.input).stem
    steps = args.steps if args.steps is not None else explain.DEFAULT_STEPS
    return [explain.explain_label(loaded, t, args.label, steps=steps) for t in texts], name


def _explain_causal(args: argparse.Namespace) -> tuple[list[Any], str]:
    from glmtune.infer import explain, lm

    loaded = lm.load_run(args.run_dir)
    if args.text is not None:
        prompt = explain.user_prompt(args.text)
        return [explain.explain_reply(loaded, prompt, args.reply)], explain.short_name(args.text, args.reply)
    pairs = _prompts_and_replies(args.input, loaded.cfg.data)
    return [explain.explain_reply(loaded, prompt, reply) for prompt, reply in pairs], Path(args.input).stem


def _prompts_and_replies(path: str, data_cfg: Any) -> list[tuple[Any, str | None]]:
    """A file's prompts and the reply to score: conversations that end with the assistant's turn (as ``glmtune eval
    --data`` reads them) give their last reply; prompts (``lm.read_prompts``) get None, so the run replies."""
    from glmtune.data.conversation import Conversation
    from glmtune.data.read import read_records
    from glmtune.data.sft import read_file
    from glmtune.infer import lm

    records = read_records(path, encoding=data_cfg.encoding, sheet=data_cfg.sheet)
    keys = ((data_cfg.columns or {}).get("messages", "messages"), "messages", "conversations")
    first = next((records[0][k] for k in keys if records and isinstance(records[0].get(k), list)), None)
    last = first[-1] if first and isinstance(first[-1], dict) else {}
    if last.get("role", last.get("from")) not in ("assistant", "gpt"):
        return [(prompt, None) for prompt in lm.read_prompts(path, data_cfg)]
    return [
        (Conversation(c.messages[:-1], c.tools, c.line, c.source), lm.reference_text(c.messages[-1]))
        for c in read_file(path, data_cfg)
    ]


def write(explanations: list[Any], out: Path, name: str, *, png: bool) -> None:
    """NAME.jsonl and NAME.html (and NAME.png for one text) under ``out``; one text is also printed."""
    from glmtune.core.runs import atomic_write_jsonl
    from glmtune.metrics import heatmap

    atomic_write_jsonl(out / f"{name}.jsonl", (e.to_json() for e in explanations))
    sections = [view for i, e in enumerate(explanations) for view in e.heat_texts(f"#{i + 1}")]
    heatmap.write_html(out / f"{name}.html", sections, f"glmtune explain: {name}")
    paths = [out / f"{name}.html", out / f"{name}.jsonl"]
    if png:
        heatmap.write_png(out / f"{name}.png", explanations[0].heat_texts("explain")[0])
        paths.append(out / f"{name}.png")
        for view in explanations[0].heat_texts("explain"):
            print(heatmap.terminal(view))
            print()
    for path in paths:
        print(path)


__all__ = ["cmd_explain"]
