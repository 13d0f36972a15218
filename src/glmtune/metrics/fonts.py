"""The one place that chooses the fonts of every plot glmtune draws, so Chinese (and other CJK) text renders.

matplotlib's default font (DejaVu Sans) has no CJK glyphs: label names like 心理 / 人工智能 come out as empty
boxes. ``plot_fonts()`` gives the rc settings every plot is drawn under (``with_plot_fonts`` decorates each
function that draws): DejaVu Sans first (Latin text looks as
it always did), then a CJK font that matplotlib falls back to glyph by glyph. The CJK font is one installed on
the system (Noto Sans CJK, Source Han Sans, WenQuanYi, SimHei, Microsoft YaHei, PingFang, ...) or else Noto
Sans CJK SC as the ``mplfonts`` package ships it (a dependency, so every install has one). Chosen once per
process.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

# Installed families that draw Chinese, in order of preference.
SYSTEM_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "SimHei",
    "Heiti SC",
    "Noto Sans CJK JP",
    "AR PL UMing CN",
)
PACKAGED_FONT = ("mplfonts", "fonts/NotoSansCJKsc-Regular.otf")  # (package, file inside it)


def _packaged_font() -> Path | None:
    """The CJK font file shipped by the ``mplfonts`` package (found without importing it), or None."""
    package, relative = PACKAGED_FONT
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of the CJK font plots fall back to (registered with matplotlib), or None when there is
    none (a warning, once: CJK text then draws as boxes)."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    for name in SYSTEM_CJK_FONTS:
        if name in installed:
            return name
    path = _packaged_font()
    if path is None:
        logger.warning(
            "no CJK font found (install mplfonts or a Noto CJK font): Chinese in plots draws as boxes"
        )
        return None
    font_manager.fontManager.addfont(str(path))
    return font_manager.FontProperties(fname=str(path)).get_name()


def plot_fonts() -> dict[str, Any]:
    """The rc settings every glmtune plot is drawn under (``matplotlib.rc_context(plot_fonts())``)."""
    cjk = cjk_font()
    # Fallback glyph by glyph works across the families of font.family (not inside a generic family's list).
    return {"font.family": ["DejaVu Sans", *([cjk] if cjk else [])]}


def with_plot_fonts(draw: Callable[P, R]) -> Callable[P, R]:
    """``draw`` run under ``plot_fonts()`` (a decorator for every function that draws a plot: text takes its
    font when it is created, so the settings must hold for the whole drawing)."""

    @wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context(plot_fonts()):
            return draw(*args, **kwargs)

    return wrapper


__all__ = ["cjk_font", "plot_fonts", "with_plot_fonts"]
