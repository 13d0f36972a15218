"""`glmtune train|eval|predict|chat|serve|export|ensemble|tune|models|data|kb|prune|explain|env`: command names →
plain functions.

parser.py (argparse: commands, flags, help) · training.py (train, tune) · inference.py (eval, predict, chat,
serve, export, ensemble) · data.py (models, data list/inspect/augment/redact) · kb.py (kb build/search) ·
prune.py (prune, with its recovery training) · explain.py (explain) · env.py (env). Heavy imports (torch,
transformers) live inside the command functions so ``glmtune --help`` is instant. ``main`` is the console script;
every command that computes starts with glmtune's thread count (``core.hardware.apply_threads``).
"""

from __future__ import annotations

from glmtune.cli.parser import build_parser
from glmtune.core.errors import user_errors_exit
from glmtune.core.hardware import apply_threads


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # Overrides may follow options (`train cfg.yaml --output d train.lr=1e-4`): argparse leaves them over.
    if args.command in ("train", "tune") and all("=" in u and not u.startswith("-") for u in unknown):
        args.args += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command not in ("models", "data") or getattr(args, "action", "") == "augment":  # lists: no torch
        apply_threads()
    args.func(args)


__all__ = ["build_parser", "main"]
