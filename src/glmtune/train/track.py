"""What a person watches during training: a progress bar, log.jsonl, TensorBoard scalars, loss/metric plots.

``Tracker`` is the one object the training loop talks to. On non-main processes it is created with
``enabled=False`` and every method does nothing, so the loop never needs ``if is_main:``. TensorBoard and
matplotlib are imported only when first needed, so importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from glmtune.core.runs import RunDir, atomic_path, atomic_write_jsonl
from glmtune.metrics.fonts import with_plot_fonts

SMOOTHING = 0.9  # progress bar: weight of the past in the loss and tokens/s averages
# Validation keys that are bookkeeping, not metrics to plot.
NOT_METRICS = frozenset({"step", "split", "time", "loss", "n", "epoch"})


class Tracker:
    """Progress bar over optimizer steps, plus one JSON line and TensorBoard scalars per ``log`` call.

    Resuming (``start_step > 0``, or a log.jsonl already there: a run killed before its first checkpoint restarts
    at 0): log lines after ``start_step`` (written by the killed run after its last checkpoint) are dropped,
    TensorBoard events after it are purged, and the bar starts there.
    """

    def __init__(
        self,
        run_dir: RunDir,
        total_steps: int | None,
        *,
        enabled: bool = True,
        start_step: int = 0,
        desc: str = "train",
        deadline: Any = None,
        start: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.deadline = deadline  # train.time_budget: the bar shows the time left (a budget.Deadline)
        self.enabled = enabled
        self.start_step = start_step
        self._resumed = False
        self._bar: Any = None
        self._writer: Any = None
        self._log_file: Any = None
        self._closed = False
        # Exponentially weighted sums: smoothed value = weighted sum / weighted count (no start-up bias).
        self._loss_sum = self._loss_weight = 0.0
        self._token_sum = self._second_sum = 0.0
        self._last_time = time.perf_counter()
        if not enabled:
            return
        run_dir.path.mkdir(parents=True, exist_ok=True)
        self._resumed = start_step > 0 or run_dir.log.is_file()
        if self._resumed:  # whatever the step, 0 included: the resumed run repeats no line
            truncate_log(run_dir.log, start_step)
        self._bar_args = dict(
            total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True
        )
        if start:
            self.start()

    def start(self) -> None:
        """Show the bar and start its clock (rate, ETA, tok/s) now: with ``start=False`` the caller does this once
        what must not count in the training rate is done (the untuned model's evaluation). Safe to call twice."""
        if self.enabled and self._bar is None:
            self._bar = tqdm(**self._bar_args)
            self._last_time = time.perf_counter()

    # ---- the progress bar
    def update(self, step: int, *, loss: float, lr: float, tokens: int) -> None:
        """Move the bar to optimizer step ``step``; ``tokens`` were processed since the previous update."""
        if not self.enabled:
            return
        self.start()
        now = time.perf_counter()
        self._loss_sum = SMOOTHING * self._loss_sum + float(loss)
        self._loss_weight = SMOOTHING * self._loss_weight + 1.0
        self._token_sum = SMOOTHING * self._token_sum + float(tokens)
        self._second_sum = SMOOTHING * self._second_sum + (now - self._last_time)
        self._last_time = now
        tokens_per_second = self._token_sum / self._second_sum if self._second_sum > 0 else 0.0
        smoothed_loss = self._loss_sum / self._loss_weight
        postfix = f"loss={smoothed_loss:.4f} lr={lr:.2e} tok/s={tqdm.format_sizeof(tokens_per_second)}"
        if self.deadline is not None:
            postfix += f" budget left={tqdm.format_interval(max(0.0, self.deadline.seconds_left()))}"
        self._bar.set_postfix_str(postfix, refresh=False)
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)
        else:
            self._bar.refresh()

    def write(self, message: str) -> None:
        """Print a line above the bar without breaking it."""
        if self.enabled:
            tqdm.write(message)

    # ---- log.jsonl and TensorBoard
    def log(self, step: int, split: str, **scalars: Any) -> None:
        """Append ``{"step", "split", **scalars, "time"}`` to log.jsonl and numbers to TensorBoard.

        Non-finite numbers are written as null in the JSON line (strict JSON) but as-is to TensorBoard.
        """
        if not self.enabled:
            return
        values = {name: _item(value) for name, value in scalars.items()}
        row = {"step": int(step), "split": split}
        row.update({name: _json_safe(value) for name, value in values.items()})
        row["time"] = round(time.time(), 3)
        if self._log_file is None:
            self._log_file = self.run_dir.log.open("a", encoding="utf-8")
        self._log_file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self._log_file.flush()
        writer = self._tensorboard()
        for name, value in values.items():
            if _is_number(value):
                writer.add_scalar(f"{split}/{name}", value, int(step))

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.start_step + 1 if self._resumed else None  # hide events after the resume point
            self._writer = SummaryWriter(str(self.run_dir.tensorboard), purge_step=purge, flush_secs=30)
        return self._writer

    # ---- the end
    def plot(self) -> None:
        """Redraw loss.png and metrics.png from log.jsonl (also done by ``close``)."""
        if self.enabled and self.run_dir.log.is_file():
            plot_curves(self.run_dir.log, self.run_dir.loss_plot, self.run_dir.metrics_plot)

    def close(self) -> None:
        """Close the bar, the log and the TensorBoard writer, then draw the plots. Safe to call twice."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self._log_file is not None:
            self._log_file.close()
        if self._writer is not None:
            self._writer.close()
        self.plot()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _item(value: Any) -> Any:
    """0-d tensors and numpy scalars → Python numbers; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a log.jsonl. A torn last line (a run killed mid-write) is skipped, not fatal."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_log(path: str | Path, last_step: int) -> None:
    """Keep only the lines with ``step <= last_step`` (rewritten atomically): a resumed run repeats none."""
    path = Path(path)
    if path.is_file():
        atomic_write_jsonl(path, [row for row in read_log(path) if row.get("step", 0) <= last_step])


# =========================================================================== plots


def _smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential moving average, debiased so the first point is not pulled to zero."""
    out, total, norm = [], 0.0, 0.0
    for value in values:
        total = weight * total + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(total / norm)
    return out


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows if _is_number(row.get(key)) and math.isfinite(row[key])]
    return [step for step, _ in points], [value for _, value in points]


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    return fig


def _save(fig: Any, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@with_plot_fonts
def plot_curves(
    log_path: str | Path,
    loss_png: str | Path,
    metrics_png: str | Path | None = None,
    *,
    smoothing: float = 0.6,
) -> None:
    """Draw loss.png (train loss raw + smoothed, validation loss) and metrics.png (validation metrics).

    Works with any amount of history: one point is drawn as a marker, nothing yet as an empty, labelled plot.
    """
    rows = read_log(log_path)
    train = [row for row in rows if row.get("split") == "train"]
    validation = [row for row in rows if row.get("split") == "validation"]

    fig = _figure()
    ax = fig.add_subplot()
    steps, losses = _series(train, "loss")
    if steps:
        few = len(steps) == 1
        ax.plot(steps, losses, lw=0.8, alpha=0.35, color="C0", marker="o" if few else None, label="train")
        ax.plot(steps, _smooth(losses, smoothing), lw=1.8, color="C0", label="train (smoothed)")
    val_steps, val_losses = _series(validation, "loss")
    if val_steps:
        ax.plot(val_steps, val_losses, marker="o", lw=1.0, color="C1", label="validation")
    if steps or val_steps:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    _save(fig, loss_png)

    if metrics_png is None:
        return
    names: list[str] = []  # every numeric validation key, in first-seen order
    for row in validation:
        names += [k for k, v in row.items() if k not in NOT_METRICS and _is_number(v) and k not in names]
    fig = _figure()
    ax = fig.add_subplot()
    for name in names:
        ax.plot(*_series(validation, name), marker="o", lw=1.2, label=name)
    if names:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation metrics yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_title("validation metrics")
    ax.grid(alpha=0.3)
    _save(fig, metrics_png)
