"""Looking before training: ``glmtune models`` and ``glmtune data list|inspect|augment|redact``.

Lists of built-in models and datasets, an SFT config's first conversations as the model sees them, and
previews of ``data.augment`` copies and of ``data.redact``'s replacements; nothing is written. Heavy imports
live inside the functions so ``glmtune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys

from glmtune.core.errors import UserError


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
    if args.action == "redact":
        preview_redact(args)
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


def preview_redact(args: argparse.Namespace) -> None:
    """The first examples of a config in which ``data.redact`` replaces something, before and after (no model)."""
    from glmtune.core import config
    from glmtune.data.redact_preview import preview

    if args.config is None:
        raise UserError(
            "no config given", expected="glmtune data redact CONFIG.yaml [key=value ...] --preview [N]"
        )
    for line in preview(config.load(args.config, args.overrides), args.preview):
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
    data = load_sft(cfg.data)
    conversations = data.train[: args.n]
    tokenizer = load_tokenizer(cfg.model)
    fmt = resolve_template(
        tokenizer, cfg.data.template, data.train, data.validation, data.test
    )  # as training
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


__all__ = ["cmd_data", "cmd_models"]
