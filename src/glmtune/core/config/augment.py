"""``data.augment``: noisy copies of each training example (word/character noise, back-translation).

Each field's docstring is its entry in ``docs/config.md`` (``python -m glmtune.core.config.reference --write``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from glmtune.core.config.choices import _choice, _positive
from glmtune.core.errors import UserError


@dataclass
class AugmentConfig:
    """Noisy copies of each *training* example (``glmtune.data.augment``); off while ``n_aug`` is 0 and no
    back-translation is set. Probabilities are per word (per character for ``char_noise_prob``)."""

    n_aug: int = 0
    """Word/character-level augmented copies per training example (0: none); validation and test are never
    augmented."""

    language: str = "auto"
    """How texts split into words: ``zh`` (jieba words), ``en`` (whitespace words), ``auto`` (``zh`` where a text
    has CJK characters)."""

    synonym_prob: float = 0.1
    """Per word: replace it by a synonym (zh: HIT Cilin, en: the bundled list)."""

    insert_prob: float = 0.0
    """Per word: insert a synonym of a random word at a random place."""

    swap_prob: float = 0.0
    """Per word: swap it with another random word."""

    delete_prob: float = 0.1
    """Per word: delete it (never every word of a text)."""

    char_noise_prob: float = 0.0
    """Per letter/digit: drop it, double it, or swap it with the next character."""

    synonyms_file: str | None = None
    """Extra synonym groups: one group per line, words separated by spaces."""

    back_translation: str | None = None
    """One more copy per training example, a paraphrase from ``module:function`` (takes the training texts,
    returns one paraphrase each) or from a model (an SFT run folder, a chat model folder or a built-in name)
    prompted with ``back_translation_prompts``."""

    back_translation_prompts: list[str] = field(
        default_factory=lambda: ["Translate into English:\n{text}", "翻译成中文：\n{text}"]
    )
    """With a model: each text goes through these user prompts (each with ``{text}`` once) in turn, each prompt
    filled with the previous answer; the last answer is the copy. Default: into English, then back into Chinese."""

    def __post_init__(self) -> None:
        _positive(self.n_aug, "data.augment.n_aug", allow_zero=True)
        _choice(self.language, ("auto", "zh", "en"), "data.augment.language")
        for name in ("synonym_prob", "insert_prob", "swap_prob", "delete_prob", "char_noise_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise UserError(f"got {value}", field=f"data.augment.{name}", expected="0 <= p <= 1")
        if self.back_translation is not None and not self.back_translation.strip():
            raise UserError(
                "empty",
                field="data.augment.back_translation",
                expected="module:function, or a model/run folder",
            )
        prompts = self.back_translation_prompts
        if not prompts or any(p.count("{text}") != 1 for p in prompts):
            raise UserError(
                f"got {self.back_translation_prompts!r}",
                field="data.augment.back_translation_prompts",
                expected="a list of prompts, each with {text} once",
            )
        probs = (self.synonym_prob, self.insert_prob, self.swap_prob, self.delete_prob, self.char_noise_prob)
        if self.n_aug and not any(probs):
            raise UserError(
                "every probability is 0, so each copy would equal its original",
                field="data.augment.n_aug",
                expected="a positive data.augment.*_prob, or n_aug: 0",
            )

    @property
    def enabled(self) -> bool:
        return bool(self.n_aug or self.back_translation)
