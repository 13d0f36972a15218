"""metrics.fonts: every plot glmtune draws renders Chinese. matplotlib warns when a glyph is missing from every
font it tries (the label would be an empty box); here that warning fails the test."""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest

from glmtune.metrics import plot_confusion
from glmtune.metrics.fonts import cjk_font, plot_fonts
from glmtune.train.track import plot_curves

LABELS = ["心理", "人工智能", "幽默", "情感"]


@contextlib.contextmanager
def no_missing_glyphs():
    """matplotlib's "Glyph ... missing from font(s) ..." warning raised as an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*[Gg]lyph.*missing from.*")
        yield


def test_a_cjk_font_is_always_found():
    name = cjk_font()
    assert name  # the mplfonts package ships one, so every install has it
    assert plot_fonts()["font.family"] == ["DejaVu Sans", name]


def test_the_check_catches_boxes(tmp_path):
    """The check itself works: DejaVu Sans alone cannot draw 心理."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with no_missing_glyphs(), matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
        fig = Figure()
        FigureCanvasAgg(fig)
        fig.add_subplot().set_title("心理")
        with pytest.raises(UserWarning, match="missing from font"):
            fig.savefig(tmp_path / "boxes.png")


def test_confusion_matrix_with_chinese_labels(tmp_path):
    with no_missing_glyphs():
        plot_confusion([[5, 1, 0, 0], [1, 6, 0, 1], [0, 0, 4, 2], [0, 1, 1, 7]], LABELS, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_loss_and_metric_curves_with_chinese_names(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [
        {"step": 1, "split": "train", "loss": 1.0},
        {"step": 2, "split": "train", "loss": 0.8},
        {"step": 2, "split": "validation", "loss": 0.9, "f1_心理": 0.5, "f1_人工智能": 0.6},
    ]
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with no_missing_glyphs():
        plot_curves(log, tmp_path / "loss.png", tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").stat().st_size > 0
