"""metrics.heatmap: colour weights, ANSI only on a colour terminal (NO_COLOR honoured), HTML escaped with every
value in its tooltip, a PNG that draws Chinese."""

from __future__ import annotations

import io
import math
import re

import pytest
from PIL import Image

from glmtune.metrics import heatmap
from glmtune.metrics.heatmap import HeatText
from tests.unit.metrics.test_fonts import no_missing_glyphs

HEAT = HeatText("t", ["质量", "很", "好", "<b>", " \n"], [2.0, -1.0, 0.5, 0.0, -2.0], caption="label pos")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_weights():
    assert heatmap.weights([2.0, -1.0, 0.0], "signed") == [1.0, -0.5, 0.0]
    assert heatmap.weights([0.0, 0.0], "signed") == [0.0, 0.0]
    probability = heatmap.weights([0.0, math.log(0.25)], "probability")
    assert probability == pytest.approx([0.0, -0.75]), "-(1 - p): a sure token stays plain"
    assert heatmap.rgb(0.0) == heatmap.WHITE and heatmap.rgb(1.0) == heatmap.GREEN
    assert heatmap.rgb(-1.0) == heatmap.RED
    with pytest.raises(ValueError, match="scale"):
        HeatText("t", ["a"], [1.0], "loud")
    with pytest.raises(ValueError, match="values"):
        HeatText("t", ["a"], [1.0, 2.0])


def test_colour_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = heatmap.terminal(HEAT, Tty())
    assert "\x1b[30;48;2;26;152;80m质量\x1b[0m" in coloured, "the largest positive value: full green"
    assert "<b>" in coloured and "\x1b[30;48;2;255;255;255m" not in coloured, "a zero stays uncoloured"
    # A newline inside a piece never carries a background colour onto the next line.
    assert all(line.endswith("\x1b[0m") or "\x1b" not in line for line in coloured.splitlines())
    plain = heatmap.terminal(HEAT, io.StringIO())
    assert "\x1b" not in plain
    assert plain.splitlines()[2:] == [
        '    0  +2.000000  "质量"',
        '    1  -1.000000  "很"',
        '    2  +0.500000  "好"',
        '    3  +0.000000  "<b>"',
        '    4  -2.000000  " \\n"',
    ]
    monkeypatch.setenv("NO_COLOR", "1")
    assert heatmap.terminal(HEAT, Tty()) == plain


def test_html_escapes_and_shows_every_value(tmp_path):
    path = tmp_path / "x.html"
    heatmap.write_html(path, [HEAT, HeatText("p", ["a"], [math.log(0.5)], "probability")], "<title>")
    page = path.read_text(encoding="utf-8")
    assert "<b>" not in page and "&lt;b&gt;" in page and "&lt;title&gt;" in page
    spans = re.findall(r'<span style="background:rgb\((\d+),(\d+),(\d+)\)" title="([^"]+)">', page)
    assert len(spans) == 6
    assert [s[3] for s in spans[:5]] == ["+2.000000", "-1.000000", "+0.500000", "+0.000000", "-2.000000"]
    assert spans[5][3] == "-0.693147 (p=0.5000)"
    assert tuple(int(c) for c in spans[0][:3]) == heatmap.GREEN


def test_png_draws_chinese(tmp_path):
    path = tmp_path / "x.png"
    many = HeatText("很多", ["人工智能"] * 30, [float(i - 15) for i in range(30)])
    with no_missing_glyphs():
        heatmap.write_png(path, many)
        heatmap.write_png(tmp_path / "p.png", HeatText("p", ["好", "\n"], [-0.1, -3.0], "probability"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100
