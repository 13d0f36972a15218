"""``glmtune train`` and ``glmtune tune``: a config (plus dotted overrides) in, a run or a search folder out.

Both print the folder they wrote; ``--resume`` continues a killed run or search from what it saved. Heavy imports
live inside the functions so ``glmtune --help`` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glmtune.core.errors import UserError


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


__all__ = ["cmd_train", "cmd_tune"]
