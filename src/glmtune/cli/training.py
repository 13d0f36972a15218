"""``glmtune train`` and ``glmtune tune``: a config (plus dotted overrides) in, a run or a search folder out.

Both print the folder they wrote; ``--resume`` continues a killed run or search from what it saved. The output
folder must take files before anything slow starts; a full disk or a read-only/permission-denied folder met later
is one line too (exit 2). Heavy imports live inside the functions so ``glmtune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from glmtune.core.errors import UserError, from_os_error, os_errors_are_user_errors


def cmd_train(args: argparse.Namespace) -> None:
    from glmtune import train
    from glmtune.core import config

    positional = list(args.args)
    config_path = positional.pop(0) if positional and "=" not in positional[0] else None
    if getattr(args, "from_run", None):  # the flag is the config key (quoted: a folder named 2024 stays text)
        positional.append(f"model.from_run={json.dumps(args.from_run)}")
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
        if args.trust_run:
            raise UserError(
                "--trust-run is for --resume", expected="glmtune train --resume RUN_DIR --trust-run"
            )
        if config_path is None and not positional:
            raise UserError("no config given", expected="glmtune train CONFIG.yaml [key=value ...]")
        cfg = config.load(config_path, positional)
        output = Path(args.output) if args.output else train.default_output(config_path)
        if cfg.model.from_run is not None and Path(cfg.model.from_run).resolve() == output.resolve():
            raise UserError(
                "the run to continue from is the output folder",
                field="model.from_run",
                expected="another --output for the continued run",
            )
    if not args.resume or output.is_dir():  # a missing run to resume: "run folder not found", below
        check_writable(output)
    with os_errors_are_user_errors(output):
        run_dir = train.run(
            cfg, output, overwrite=args.overwrite, resume=bool(args.resume), trust_run=args.trust_run
        )
    print(run_dir)


def check_writable(folder: Path) -> None:
    """A file can be made in ``folder`` (or, before it exists, in the nearest folder above it): a read-only or
    permission-denied output fails here, before the data and the model load."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    for target in (probe, probe / "checkpoints"):
        if not target.is_dir():  # no checkpoints yet; or a file where a folder should be: RunDir says so
            continue
        try:
            with tempfile.TemporaryFile(dir=target):
                pass
        except OSError as error:  # named by the folder, not by the probe's random name
            raise from_os_error(OSError(error.errno, error.strerror), target) or UserError(
                f"cannot write there ({error.strerror})", file=str(target)
            ) from None


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
    check_writable(out)
    with os_errors_are_user_errors(out):
        print(search.run(cfg, out, trials=args.trials, source=config_path))


__all__ = ["check_writable", "cmd_train", "cmd_tune"]
