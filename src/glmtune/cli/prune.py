"""``glmtune prune RUN --out DIR``: the pruning itself is infer's (``infer.prune``, a finished run in, a run-like
folder out); ``--recover STEPS`` then trains that folder for a few steps distilling from the unpruned run
(``method.distill``, the run's own method) into ``DIR/recovered`` — training, so it lives here, where both layers may be used.

Prints what was cut (layers, parameters, size) and the folder(s) to use.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError, os_errors_are_user_errors

RECOVERED = "recovered"


def recovery_config(run_dir: Path, pruned: Path, steps: int, lr: float | None = None) -> Any:
    """The pruned folder's config trained ``steps`` steps distilling from ``run_dir``: with the run's own method
    (freeze: at most as many layers as are left) and learning rate (``lr`` instead, when given), and the run's
    ``method.distill`` temperature and alpha (else the defaults)."""
    from glmtune.core import config as config_mod
    from glmtune.core.runs import RunDir
    from glmtune.infer.prune import surgery

    cfg = config_mod.load(RunDir(pruned).config)
    original = config_mod.load(RunDir(run_dir).config).method
    layers = surgery.read_num_layers(Path(cfg.model.name_or_path))
    distill = dataclasses.replace(original.distill, teacher=str(run_dir.absolute()))
    method = dataclasses.replace(
        original, distill=distill, trainable_layers=min(original.trainable_layers, layers)
    )
    train = dataclasses.replace(
        cfg.train,
        max_steps=steps,
        time_budget=None,
        lr=cfg.train.lr if lr is None else lr,
        patience=None,
        eval_steps=None,
        save_steps=None,
    )
    return dataclasses.replace(cfg, method=method, train=train)


def recover(run_dir: Path, pruned: Path, steps: int, lr: float | None = None) -> Path:
    """Train the pruned folder into ``pruned/recovered`` (a normal run whose base is ``pruned/model``)."""
    from glmtune import train

    cfg = recovery_config(run_dir, pruned, steps, lr)
    return train.run(cfg, pruned / RECOVERED)


def cmd_prune(args: argparse.Namespace) -> None:
    from glmtune.infer import prune as prune_mod

    request = prune_mod.Request(
        layers=args.layers,
        sparsity=args.sparsity,
        mlp_sparsity=args.mlp_sparsity,
        unstructured=args.unstructured,
        calibration=args.calibration,
    )
    if args.recover is not None and args.recover < 1:
        raise UserError(f"got {args.recover}", field="--recover", expected="a number of training steps ≥ 1")
    run_dir, out = Path(args.run_dir), Path(args.out)
    with os_errors_are_user_errors(out):
        report = prune_mod.prune(run_dir, out, request)
    before, after = report["parameters_before"], report["parameters_after"]
    print(
        f"layers {report['layers_before']} → {report['layers_after']}, parameters {before:,} → {after:,} "
        f"({100 * (1 - after / before):.1f}% fewer), model/ {report['model_bytes'] / 2**20:.1f} MiB"
    )
    if "layers" in report:
        print(f"removed layers {report['layers']['removed']} (lowest Block Influence)")
    print(out)
    if args.recover is not None:
        with os_errors_are_user_errors(out):
            print(recover(run_dir, out, args.recover, args.recover_lr))


def add_parser(sub: Any) -> None:
    """``glmtune prune``'s flags (parser.py calls this: its own help stays next to the command)."""
    p = sub.add_parser(
        "prune", help="structured pruning of a run: remove decoder layers (Block Influence) and MLP channels"
    )
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the new pruned run folder (never overwritten)")
    p.add_argument("--layers", type=int, metavar="N", help="remove N decoder layers (lowest Block Influence)")
    p.add_argument("--sparsity", type=float, metavar="F", help="remove round(F × layers) decoder layers")
    p.add_argument("--mlp-sparsity", type=float, metavar="F", help="remove F of every MLP's channels")
    p.add_argument(
        "--unstructured",
        type=float,
        metavar="F",
        help="zero F of every layer Linear's weights by magnitude (no speed or size gain: stored densely)",
    )
    p.add_argument("--calibration", type=int, default=64, help="validation examples that measure importance")
    p.add_argument(
        "--recover",
        type=int,
        metavar="STEPS",
        help="then train STEPS steps distilling from RUN (DIR/recovered)",
    )
    p.add_argument("--recover-lr", type=float, help="--recover's learning rate (default: the run's train.lr)")
    p.set_defaults(func=cmd_prune)


__all__ = ["add_parser", "cmd_prune", "recover", "recovery_config"]
