"""Retrieval into a conversation: the last user turn gets the passages its query finds, within a token budget.

``open_retrieval(cfg.knowledge, recorded_id)`` opens the configured knowledge base (the built-in
``xinghe-manual`` is built once into the cache), refuses one whose source documents changed since it was built,
and one other than the run's own (``recorded_id``) unless ``knowledge.allow_other_kb``. ``Retrieval.augment``
rewrites a conversation's last user turn through ``knowledge.template``; given ``fits`` (does this conversation
fit ``train.max_seq_len``?), it drops passages from the lowest-ranked up, then shortens the last one, until the
conversation fits: the question and the answer are never cut. Training and inference call the same code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.core.config.knowledge import KnowledgeConfig
from glmtune.core.errors import UserError
from glmtune.data.knowledge.index import MANIFEST, KnowledgeBase, build
from glmtune.data.messages import Conversation, Message

BUILTIN_KB = "xinghe-manual"


def builtin_kb_dir() -> Path:
    """Where the built-in knowledge base is built: beside the built-in models' cache."""
    from glmtune.models.builtin import default_cache_dir

    return default_cache_dir().parent / "knowledge" / BUILTIN_KB


def _resolve(kb: str) -> Path:
    if kb != BUILTIN_KB:
        return Path(kb).expanduser()
    from glmtune.data.knowledge import demo

    root = builtin_kb_dir()
    if not (root / "index" / MANIFEST).is_file():
        demo.write_manual(root / "docs")
        build(root / "docs", root / "index", chunk_tokens=120, overlap=20)  # one page per chunk
    return root / "index"


@dataclass
class Augmented:
    """What retrieval did to a split: conversations with passages, none found, passages cut to fit."""

    with_passages: int = 0
    without: int = 0
    cut: int = 0


@dataclass
class Retrieval:
    kb: KnowledgeBase
    cfg: KnowledgeConfig

    def query(self, messages: list[Message]) -> tuple[int, str]:
        """The index of the last user turn, and the text to search for."""
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        if not users:
            return -1, ""
        if self.cfg.query == "all_user":
            return users[-1], "\n".join(messages[i].content for i in users)
        return users[-1], messages[users[-1]].content

    def render(self, query: str, hits: list[dict[str, Any]]) -> str:
        lines = [
            self.cfg.passage_template.format(n=n, text=h["text"], source=h["source"])
            for n, h in enumerate(hits, 1)
        ]
        return self.cfg.template.format(passages="\n".join(lines), query=query)

    def augment_messages(
        self, messages: list[Message], fits: Callable[[list[Message]], bool] | None = None
    ) -> tuple[list[Message], int, bool]:
        """``messages`` with the last user turn carrying its passages; returns them, how many passages were
        used, and whether any was dropped or shortened to fit."""
        index, query = self.query(messages)
        hits = self.kb.search(query, self.cfg.top_k) if index >= 0 else []
        if not hits:
            return messages, 0, False

        def with_hits(chosen: list[dict[str, Any]]) -> list[Message]:
            turn = dataclasses.replace(messages[index], content=self.render(messages[index].content, chosen))
            return [*messages[:index], turn, *messages[index + 1 :]]

        out, cut = with_hits(hits), False
        while fits is not None and not fits(out) and hits:
            cut = True
            last = hits[-1]["text"]
            if len(hits) > 1 or len(last) <= 8:
                hits = hits[:-1]  # the lowest-ranked passage goes first
            else:
                hits = [{**hits[0], "text": last[: len(last) // 2]}]  # then the best one is halved
            out = with_hits(hits) if hits else messages
        return out, len(hits), cut

    def augment(
        self, conversations: list[Conversation], fits: Callable[[Conversation], bool] | None = None
    ) -> tuple[list[Conversation], Augmented]:
        """Each conversation with its passages (see ``augment_messages``), and what happened, counted."""
        done, counts = [], Augmented()
        for conv in conversations:
            check = None if fits is None else (lambda m, c=conv: fits(dataclasses.replace(c, messages=m)))
            messages, used, cut = self.augment_messages(conv.messages, check)
            counts.with_passages += bool(used)
            counts.without += not used
            counts.cut += cut
            done.append(dataclasses.replace(conv, messages=messages))
        return done, counts


def open_retrieval(cfg: KnowledgeConfig, recorded_id: str | None = None) -> Retrieval | None:
    """The configured knowledge base ready to search, or None when ``knowledge.kb`` is unset."""
    if not cfg.enabled:
        return None
    kb = KnowledgeBase.load(_resolve(cfg.kb))
    changed = kb.changed_documents()
    if changed:
        raise UserError(
            f"documents changed since the knowledge base was built: {', '.join(changed[:5])}",
            field="knowledge.kb",
            expected=f"glmtune kb build {kb.manifest['source']} --out {cfg.kb} --overwrite",
        )
    if recorded_id is not None and kb.kb_id != recorded_id and not cfg.allow_other_kb:
        raise UserError(
            f"the run was trained with knowledge base {recorded_id}, this is {kb.kb_id} ({cfg.kb})",
            field="knowledge.kb",
            expected="the run's own knowledge base, or knowledge.allow_other_kb: true",
        )
    return Retrieval(kb, cfg)


def augment_splits(
    cfg: KnowledgeConfig,
    splits: dict[str, list[Conversation]],
    fits: Callable[[Conversation], bool],
) -> tuple[dict[str, list[Conversation]], dict[str, Any] | None]:
    """Training: every split with its passages (``fits``: does a conversation fit the run's length limit), and
    the record a run folder keeps (``knowledge.json``: the knowledge base, its id, what happened per split)."""
    retrieval = open_retrieval(cfg)
    if retrieval is None:
        return splits, None
    done, counts = {}, {}
    for name, conversations in splits.items():
        done[name], what = retrieval.augment(conversations, fits)
        counts[name] = dataclasses.asdict(what)
    return done, {"kb": cfg.kb, "kb_id": retrieval.kb.kb_id, "top_k": cfg.top_k, "splits": counts}


def describe_record(record: dict[str, Any]) -> str:
    """One log line: which knowledge base, and per split how many conversations got passages."""
    parts = [
        f"{name}: {c['with_passages']} with passages, {c['without']} none found, {c['cut']} cut to fit"
        for name, c in record["splits"].items()
    ]
    return f"knowledge base {record['kb']} ({record['kb_id']}, top {record['top_k']}): " + "; ".join(parts)


__all__ = [
    "BUILTIN_KB",
    "Augmented",
    "Retrieval",
    "augment_splits",
    "builtin_kb_dir",
    "describe_record",
    "open_retrieval",
]
