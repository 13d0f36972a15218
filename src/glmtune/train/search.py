"""Hyper-parameter search: ``glmtune tune CFG --trials N`` runs Optuna over the ranges in the config's ``tune:``.

Each trial is a normal run folder (``trial-000``, ...) trained by ``train.run`` from the base config with the
trial's values; its objective is the validation metric at its best checkpoint. Trials report every
validation evaluation to Optuna (``train.run``'s ``on_evaluate`` hook), so the median pruner can stop a poor
trial early; a pruned trial still finishes its folder like an early stop. After every trial the tune folder
gets summary.csv / summary.md (one row per trial) and best.yaml (the best trial's config, re-runnable with
``glmtune train best.yaml``). The study lives in study.journal, so ``glmtune tune --resume DIR`` continues a
killed search.

    tune:
      metric: accuracy                 # default: train.metric
      space:
        train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}   # a float range (log scale)
        method.lora_r: [4, 8, 16]                          # choices
        train.batch_size: {low: 8, high: 32, step: 8}      # an int range (int fields)
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.core import config as config_mod
from glmtune.core.config import LOWER_IS_BETTER, Config
from glmtune.core.errors import UserError
from glmtune.core.runs import atomic_write_json, atomic_write_text, read_json
from glmtune.train import reset_process_state

RANGE_KEYS = ("low", "high", "log", "step")
TUNE_CONFIG = "tune.yaml"  # the resolved base config (with its tune section): what --resume continues
STUDY = "study.journal"


# --------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Param:
    """One tuned config key: a numeric range (``kind`` int or float) or a list of choices (``categorical``)."""

    key: str  # dotted config key, e.g. train.lr
    kind: str  # int, float or categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values whose validity implies the whole range's (every check is a bound)."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of a config dataclass and its type annotation (sections expanded)."""
    leaves: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            leaves.update(_leaf_types(hints[f.name], f"{prefix}{f.name}."))
        else:
            leaves[f"{prefix}{f.name}"] = hints[f.name]
    return leaves


def _numeric_type(tp: Any) -> type | None:
    """int or float for a numeric field (``int``, ``float | None``), else None."""
    options = [t for t in typing.get_args(tp) or (tp,) if t is not type(None)]
    return options[0] if len(options) == 1 and options[0] in (int, float) else None


def parse_space(space: dict[str, Any], source: str) -> list[Param]:
    """``tune.space`` → Params, every key and range checked against the config's fields."""
    leaves = {k: v for k, v in _leaf_types(Config).items() if not k.startswith("tune.")}
    params = []
    for key, spec in space.items():
        name = f"tune.space.{key}"
        if key not in leaves:
            near = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UserError(f"unknown config key '{key}'{hint}", file=source, field=name)
        if key == "train.metric":
            raise UserError(
                "the tuned metric is fixed", file=source, field=name, expected="tune.metric instead"
            )
        tp = leaves[key]
        if isinstance(spec, list):
            if not spec or not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
                raise UserError(f"got {spec!r}", file=source, field=name, expected="a list of plain values")
            choices = tuple(config_mod.coerce(v, tp, name, source) for v in spec)
            params.append(Param(key, "categorical", choices=choices))
            continue
        if not isinstance(spec, dict):
            raise UserError(
                f"got {spec!r}", file=source, field=name, expected="{low: .., high: ..} or a list of choices"
            )
        unknown = [k for k in spec if k not in RANGE_KEYS]
        if unknown or "low" not in spec or "high" not in spec:
            raise UserError(
                f"got keys {sorted(spec)}",
                file=source,
                field=name,
                expected="low, high and optionally log, step",
            )
        number = _numeric_type(tp)
        if number is None:
            raise UserError(
                "a range needs a numeric field", file=source, field=name, expected="a list of choices"
            )
        low, high = (config_mod.coerce(spec[k], number, f"{name}.{k}", source) for k in ("low", "high"))
        log = config_mod.coerce(spec.get("log", False), bool, f"{name}.log", source)
        step = spec.get("step")
        if step is not None:
            step = config_mod.coerce(step, number, f"{name}.step", source)
        if not low < high:
            raise UserError(f"low {low} >= high {high}", file=source, field=name, expected="low < high")
        if log and (low <= 0 or step not in (None, 1)):
            raise UserError(
                "a log range needs low > 0 and no step",
                file=source,
                field=name,
                expected="log: false, or low > 0",
            )
        if step is not None and step <= 0:
            raise UserError(f"step {step}", file=source, field=name, expected="a positive step")
        params.append(Param(key, number.__name__, low, high, log, step))
    if not params:
        raise UserError("nothing to tune", file=source, field="tune.space", expected="at least one key")
    return params


def trial_values(base: Config, metric: str, assignment: dict[str, Any]) -> dict[str, Any]:
    """The config dict of one trial: the base config, tune section dropped, the tuned metric, the trial's values."""
    values = base.to_dict()
    del values["tune"]
    values["train"]["metric"] = metric
    for key, value in assignment.items():
        config_mod.set_dotted(values, key, value)
    return values


def check_space(base: Config, params: list[Param], metric: str, source: str) -> None:
    """Every bound and choice, each alone, still makes a valid config (so no trial fails on a bad value)."""
    for param in params:
        for value in param.extremes():
            try:
                config_mod.from_dict(trial_values(base, metric, {param.key: value}), source)
            except UserError as error:
                detail = str(error).removeprefix(f"{error.file}: ") if error.file else str(error)
                raise UserError(
                    f"{value!r} makes an invalid config: {detail}",
                    file=source,
                    field=f"tune.space.{param.key}",
                ) from None


# --------------------------------------------------------------------------- the study


def _study(cfg: Config, out: Path, direction: str, *, resume: bool) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    tune = cfg.tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    if tune.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=tune.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=tune.seed)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_steps)
        if tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = JournalStorage(JournalFileBackend(str(out / STUDY)))
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name="glmtune",
        direction=direction,
        load_if_exists=resume,
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # killed mid-trial: not coming back
    return study


def _objective(base: Config, params: list[Param], metric: str, out: Path, source: str):
    import optuna

    from glmtune import train

    def objective(trial: Any) -> float:
        assignment = {p.key: p.suggest(trial) for p in params}
        cfg = config_mod.from_dict(trial_values(base, metric, assignment), f"{source} (trial {trial.number})")
        run_dir = out / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", run_dir.name)
        pruned: list[int] = []

        def on_evaluate(step: int, metrics: dict[str, Any]) -> bool:
            value = metrics.get(metric)
            if value is None:
                return False
            trial.report(float(value), step)
            if trial.should_prune():
                pruned.append(step)
                return True
            return False

        print(f"--- trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in assignment.items()))
        reset_process_state()
        train.run(cfg, run_dir, overwrite=True, on_evaluate=on_evaluate)
        results = read_json(run_dir / "metrics.json")
        for split in ("validation", "test"):
            trial.set_user_attr(split, results.get(split, {}).get(metric))
        trial.set_user_attr("steps", results.get("steps"))
        if pruned:
            print(f"--- trial {trial.number}: pruned at step {pruned[0]}")
            raise optuna.TrialPruned()
        value = results["validation"][metric]
        return float("nan") if value is None else float(value)

    return objective


# --------------------------------------------------------------------------- outputs


def summary_rows(study: Any, params: list[Param], metric: str) -> list[dict[str, Any]]:
    """One dict per trial: number, state, the objective, its test value, steps, the tuned values, folder."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value if trial.value is not None else trial.user_attrs.get("validation")
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                f"validation_{metric}": value,
                f"test_{metric}": trial.user_attrs.get("test"),
                "steps": trial.user_attrs.get("steps"),
                **{p.key: trial.params.get(p.key) for p in params},
                "run": trial.user_attrs.get("run", f"trial-{trial.number:03d}"),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned Markdown table (readable printed and in summary.md)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    header = list(rows[0])
    body = [[cell(row[k]) for k in header] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [[h.ljust(w) for h, w in zip(header, widths)], ["-" * w for w in widths]]
    lines += [[c.ljust(w) for c, w in zip(r, widths)] for r in body]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_outputs(study: Any, params: list[Param], metric: str, out: Path) -> str:
    """summary.csv, summary.md and best.yaml (when a trial completed); returns the Markdown table."""
    rows = summary_rows(study, params, metric)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", buffer.getvalue())
    table = markdown_table(rows)
    atomic_write_text(out / "summary.md", table + "\n")
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return table
    run_dir = out / best.user_attrs["run"]
    header = (
        f"# best of {len(rows)} trials: {run_dir.name}, validation {metric} {best.value:.6g}\n"
        f"# re-run it: glmtune train best.yaml --output DIR\n"
    )
    atomic_write_text(out / "best.yaml", header + (run_dir / "config.yaml").read_text(encoding="utf-8"))
    atomic_write_json(
        out / "best.json",
        {
            "trial": best.number,
            "run": run_dir.name,
            "metric": metric,
            "value": best.value,
            "params": best.params,
        },
    )
    return table


# --------------------------------------------------------------------------- the command


def run(
    cfg: Config | None,
    out: str | Path,
    *,
    trials: int | None = None,
    resume: bool = False,
    source: str = "<config>",
) -> Path:
    """Search ``cfg.tune.space`` with ``trials`` trials into the tune folder ``out`` (or continue it: resume)."""
    out = Path(out)
    if resume:
        if not (out / TUNE_CONFIG).is_file() or not (out / STUDY).is_file():
            raise UserError("not a tune folder (no tune.yaml / study.journal)", file=str(out))
        source = str(out / TUNE_CONFIG)
        cfg = config_mod.load(source)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            "tune folder exists", file=str(out), expected="a new folder, or --resume to continue it"
        )
    assert cfg is not None
    metric = cfg.tune.metric or cfg.train.metric
    assert metric is not None  # Config.__post_init__ resolves train.metric
    params = parse_space(cfg.tune.space, source)
    check_space(cfg, params, metric, source)
    if cfg.data.validation_size == 0 and cfg.data.validation_file is None:
        raise UserError(
            "trials are judged on validation data",
            field="data.validation_size",
            expected="a validation split",
        )
    total = trials if trials is not None else cfg.tune.trials
    if total < 1:
        raise UserError(f"got {total}", field="--trials", expected="a positive number")

    direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg.tune.trials = total  # so that --resume without --trials aims for the same number
        atomic_write_text(out / TUNE_CONFIG, config_mod.dump(cfg))
    study = _study(cfg, out, direction, resume=resume)
    import optuna

    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    print(
        f"tuning {len(params)} keys to {direction} validation {metric}: {max(total - done, 0)} trials to run"
    )
    import torch

    study.optimize(
        _objective(cfg, params, metric, out, source),
        n_trials=max(total - done, 0),
        catch=(torch.OutOfMemoryError,),  # a trial too big for the device fails alone; the search goes on
        callbacks=[lambda study, _trial: write_outputs(study, params, metric, out)],
    )
    reset_process_state()
    if study.get_trials(deepcopy=False):
        print(write_outputs(study, params, metric, out))
    return out


__all__ = ["run", "parse_space", "Param", "trial_values", "summary_rows"]
