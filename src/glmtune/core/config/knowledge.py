"""Knowledge enhancement: the ``knowledge`` section (retrieval-augmented fine-tuning and inference).

Each field's docstring is its entry in ``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

from dataclasses import dataclass

from glmtune.core.config.choices import _choice, _positive
from glmtune.core.errors import UserError

QUERY_SOURCES = ("last_user", "all_user")


@dataclass
class KnowledgeConfig:
    """Passages retrieved from a knowledge base are put into the last user turn, in training (so the model
    learns to use them) and wherever the run is used (eval, predict, chat, serve). Passages are never learned."""

    kb: str | None = None
    """A knowledge base folder written by ``glmtune kb build``, or the built-in ``xinghe-manual`` (a made-up product
    manual). Unset: no retrieval. A run records the knowledge base's id and refuses another one later unless
    ``allow_other_kb``."""

    top_k: int = 3
    """Passages retrieved per prompt (fewer when fewer share a word with the query)."""

    template: str = "参考资料：\n{passages}\n\n问题：{query}"
    """The user turn the model sees: ``{passages}`` (the passages, each through ``passage_template``, one per
    line) and ``{query}`` (the user's own text) each once. With no passage found, the user's text is left as is."""

    passage_template: str = "[{n}] {text}"
    """One passage: ``{n}`` its rank (1, 2, ...), ``{text}`` its text; ``{source}`` (its document) may be used."""

    query: str = "last_user"
    """What is searched: ``last_user`` (the last user turn) or ``all_user`` (every user turn, joined)."""

    allow_other_kb: bool = False
    """Use a knowledge base other than the one the run was trained with (by id) when the run is loaded."""

    def __post_init__(self) -> None:
        _positive(self.top_k, "knowledge.top_k")
        _choice(self.query, QUERY_SOURCES, "knowledge.query")
        for name, keys in (("template", ("{passages}", "{query}")), ("passage_template", ("{text}",))):
            text = getattr(self, name)
            if any(text.count(key) != 1 for key in keys):
                raise UserError(
                    f"got {text!r}", field=f"knowledge.{name}", expected=" and ".join(keys) + " once each"
                )
        if self.kb is not None and not self.kb.strip():
            raise UserError("empty", field="knowledge.kb", expected="a knowledge base folder, or null")

    @property
    def enabled(self) -> bool:
        return self.kb is not None


__all__ = ["QUERY_SOURCES", "KnowledgeConfig"]
