"""The README and docs/ stay navigable: relative links (and their #anchors) resolve, the README stays a short
product page whose quick start is the Makefile's two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO

ROOT = REPO
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])

# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" may follow).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def without_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Link targets outside code blocks and inline code, URLs (anything with a scheme) left out."""
    return [m.group(1) for m in LINK.finditer(without_code(text)) if not SCHEME.match(m.group(1))]


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    ids = set()
    for title in HEADING.findall(FENCE.sub("", text)):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        ids.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        file_part, _, anchor = target.partition("#")
        goal = (path.parent / file_part) if file_part else path
        if not goal.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and goal.suffix == ".md" and anchor not in anchors(goal.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading)")
    return broken


def test_the_docs_exist():
    for name in ("benchmarks.md", "recipes.md", "chatglm3.md", "config.md", "DESIGN.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_link_finder_sees_links_and_skips_code_and_urls():
    sample = (
        '[a](docs/x.md) ![i](img.png "t") [w](https://x.org) [s](#sec) `[c](no.md)`\n```\n[d](no2.md)\n```\n'
    )
    assert links(sample) == ["docs/x.md", "img.png", "#sec"]


def test_anchors_follow_github():
    text = "# Title\n## The demo (`make demo`)\n## SFT before/after\n## data.train_files[]\n## Title\n```\n# not\n```\n"
    assert anchors(text) == {"title", "the-demo-make-demo", "sft-beforeafter", "datatrain_files", "title-1"}


def test_readme_is_a_short_product_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move details into docs/"


def test_readme_quick_start_is_the_two_make_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
