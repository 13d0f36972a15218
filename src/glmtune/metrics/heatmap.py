"""Text heat maps: pieces of text coloured by one number each, for the terminal (ANSI), a web page and a PNG.

Contract: generic (knows nothing of models). Two scales: ``signed`` (attributions: green where a piece speaks for
the answer, red against it, intensity |value| / max |value|) and ``probability`` (log-probabilities: red where
the model was unsure, intensity 1 − p, so confident pieces stay plain). The terminal gets colour only when the
stream is a tty and ``NO_COLOR`` is unset or empty (no-color.org); otherwise one plain line per piece. HTML and
PNG are written atomically; the PNG draws Chinese through ``fonts``.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from glmtune.core.runs import atomic_path, atomic_write_text
from glmtune.metrics.fonts import with_plot_fonts

SCALES = ("signed", "probability")
WHITE = (255, 255, 255)
GREEN = (26, 152, 80)  # positive attribution
RED = (215, 48, 39)  # negative attribution, or an unlikely token
VISIBLE = 0.04  # weights below this stay uncoloured in the terminal (noise, and readability)


@dataclass(frozen=True)
class HeatText:
    """One coloured text: its ``pieces`` (tokens or words, in order) and one value each on ``scale``."""

    title: str
    pieces: Sequence[str]
    values: Sequence[float]
    scale: str = "signed"
    caption: str = ""  # one line under the title (the label, the completeness delta, ...)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; expected one of {SCALES}")
        if len(self.pieces) != len(self.values):
            raise ValueError(f"{len(self.pieces)} pieces but {len(self.values)} values")


def weights(values: Sequence[float], scale: str) -> list[float]:
    """Each value as a colour weight in [-1, 1] (sign: green or red; magnitude: intensity)."""
    if scale == "probability":  # log p → -(1 - p): certain tokens 0, impossible ones -1
        return [-(1.0 - math.exp(min(float(v), 0.0))) for v in values]
    largest = max((abs(float(v)) for v in values), default=0.0)
    return [float(v) / largest if largest > 0 else 0.0 for v in values]


def rgb(weight: float) -> tuple[int, int, int]:
    """White blended toward green (weight > 0) or red (< 0) by |weight|."""
    target = GREEN if weight > 0 else RED
    share = min(abs(weight), 1.0)
    return tuple(round(w + (t - w) * share) for w, t in zip(WHITE, target))  # type: ignore[return-value]


def use_colour(stream: TextIO) -> bool:
    """Colour for a terminal only, and never with ``NO_COLOR`` set to anything non-empty."""
    isatty = getattr(stream, "isatty", None)
    return not os.environ.get("NO_COLOR") and bool(isatty and isatty())


def ansi(heat: HeatText) -> str:
    """The text with 24-bit background colours (dark text on them, readable on light and dark terminals)."""
    out = [heat.title, *([heat.caption] if heat.caption else [])]
    line = []
    for piece, weight in zip(heat.pieces, weights(heat.values, heat.scale)):
        if abs(weight) < VISIBLE:
            line.append(piece)
            continue
        r, g, b = rgb(weight)
        # Colour each line of a piece on its own: a colour carried over a newline paints the whole next row.
        line.append("\n".join(f"\x1b[30;48;2;{r};{g};{b}m{part}\x1b[0m" for part in piece.split("\n")))
    out.append("".join(line))
    return "\n".join(out)


def plain(heat: HeatText) -> str:
    """One line per piece: position, value, the piece as JSON (whitespace and quotes visible)."""
    rows = [
        f"{i:>5}  {float(v):+.6f}  {json.dumps(p, ensure_ascii=False)}"
        for i, (p, v) in enumerate(zip(heat.pieces, heat.values))
    ]
    return "\n".join([heat.title, *([heat.caption] if heat.caption else []), *rows])


def terminal(heat: HeatText, stream: TextIO | None = None) -> str:
    """``ansi`` for a colour terminal, ``plain`` otherwise (a pipe, a file, ``NO_COLOR``)."""
    return ansi(heat) if use_colour(stream or sys.stdout) else plain(heat)


# --------------------------------------------------------------------------- HTML

_STYLE = """body{font-family:system-ui,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei',sans-serif;margin:2em;
max-width:60em;color:#222}section{margin-bottom:2em}h2{font-size:1.1em;margin-bottom:.2em}
.caption{color:#555;font-size:.9em;margin:.2em 0 .6em}.text{white-space:pre-wrap;line-height:1.9;font-size:1.05em;
border:1px solid #ddd;padding:.6em;border-radius:4px}.text span{border-radius:3px;padding:1px 0}
.legend{color:#555;font-size:.85em}"""


def html_section(heat: HeatText) -> str:
    """One ``<section>``: a title, the caption, the coloured text (each piece's value in its tooltip)."""
    spans = []
    for piece, value, weight in zip(heat.pieces, heat.values, weights(heat.values, heat.scale)):
        r, g, b = rgb(weight)
        tip = f"{float(value):+.6f}" + (
            f" (p={math.exp(min(float(value), 0.0)):.4f})" if heat.scale == "probability" else ""
        )
        spans.append(f'<span style="background:rgb({r},{g},{b})" title="{tip}">{html.escape(piece)}</span>')
    legend = (
        "green: for the label, red: against it; intensity: |attribution| / max |attribution|"
        if heat.scale == "signed"
        else "red: an unlikely token (intensity 1 − p); hover for log p and p"
    )
    caption = f'<p class="caption">{html.escape(heat.caption)}</p>' if heat.caption else ""
    return (
        f"<section><h2>{html.escape(heat.title)}</h2>{caption}"
        f'<div class="text">{"".join(spans)}</div><p class="legend">{legend}</p></section>'
    )


def html_page(sections: Sequence[HeatText], title: str) -> str:
    """A standalone UTF-8 page (no scripts, no external files) of every section in order."""
    body = "\n".join(html_section(s) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def write_html(path: str | Path, sections: Sequence[HeatText], title: str) -> None:
    atomic_write_text(path, html_page(sections, title))


# --------------------------------------------------------------------------- PNG


def _cell_text(piece: str, width: int = 8) -> str:
    """A piece as a grid cell shows it: whitespace made visible, long pieces cut with an ellipsis."""
    shown = piece.replace("\n", "↵").replace("\t", "→")
    shown = shown if shown.strip() else shown.replace(" ", "␣")
    return shown if len(shown) <= width else shown[: width - 1] + "…"


@with_plot_fonts
def write_png(path: str | Path, heat: HeatText, columns: int = 12) -> None:
    """The pieces as a grid of cells (reading order, ``columns`` a row), each coloured by its value, with a
    colour bar in the values' own units (attribution, or p for log-probabilities); written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    n = len(heat.pieces)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    grid = np.full(rows * columns, np.nan)  # [rows * columns]; NaN: no piece in that cell
    values = np.asarray(heat.values, dtype=np.float64)  # [n]
    if heat.scale == "probability":
        grid[:n] = np.exp(np.minimum(values, 0.0))  # p: 0 red .. 1 white
        cmap = LinearSegmentedColormap.from_list("unsure", [np.array(RED) / 255, np.array(WHITE) / 255])
        vmin, vmax, label = 0.0, 1.0, "p(token)"
    else:
        largest = float(np.abs(values).max()) if n and np.abs(values).max() > 0 else 1.0
        grid[:n] = values
        colours = [np.array(c) / 255 for c in (RED, WHITE, GREEN)]
        cmap = LinearSegmentedColormap.from_list("signed", colours)
        vmin, vmax, label = -largest, largest, "attribution"
    cmap = cmap.with_extremes(bad="white")
    fig = Figure(figsize=(2.0 + 0.85 * columns, 1.6 + 0.45 * rows), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid.reshape(rows, columns), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for index, piece in enumerate(heat.pieces):
        ax.text(index % columns, index // columns, _cell_text(piece), ha="center", va="center", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    caption = textwrap.fill(heat.caption, width=int(14 * columns)) if heat.caption else ""
    ax.set_title(heat.title + (f"\n{caption}" if caption else ""), fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label=label)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


__all__ = [
    "SCALES",
    "HeatText",
    "ansi",
    "html_page",
    "plain",
    "rgb",
    "terminal",
    "use_colour",
    "weights",
    "write_html",
    "write_png",
]
