"""Classification as generation: a template around each text, optional demonstrations, label words → token ids.

PET-style prompts (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification") for a
causal LM: the text goes into ``prompt.template`` at ``{text}``, and each label is scored by the
log-probability of its label word(s) right after the template (a causal LM reads left to right, so the
answer comes last). Few-shot prompts put ``prompt.few_shot`` demonstrations from the training split first
(``template`` with the demonstration's text, followed by its label word), the same ones for every text, picked
with ``data.seed`` and one label after another so every label is shown.

The pieces (template prefix, text, suffix, label words) are tokenised separately, without special tokens,
so a long text is cut without ever cutting the template around it (the answer cue stays last). A model's own
special prefix (BOS) is kept in front, as for the classification head. Nothing here imports a model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glmtune.core.config import PromptConfig
from glmtune.core.errors import UserError

MIN_TEXT_TOKENS = 4  # a demonstration's text is never cut below this


@dataclass
class Prompt:
    """What turns an ``Example`` into a prompt: the template, label words per label, the demonstrations."""

    template: str
    words: list[list[str]]  # per label index, its label words
    demonstrations: list[tuple[str, int]]  # (text, label index), in prompt order
    separator: str

    @classmethod
    def build(cls, cfg: PromptConfig, labels: list[str], train: Sequence[Any], seed: int) -> Prompt:
        """Check the verbalizer against the label set and pick the demonstrations from ``train``."""
        verbalizer = cfg.verbalizer or {}
        missing = [label for label in labels if label not in verbalizer]
        extra = [label for label in verbalizer if label not in labels]
        if missing or extra:
            raise UserError(
                f"labels without words {missing}, words for unknown labels {extra}",
                field="prompt.verbalizer",
                expected=f"one entry per label of the data: {labels}",
            )
        if cfg.few_shot > len(train):
            raise UserError(
                f"got {cfg.few_shot} but the training split has {len(train)} examples",
                field="prompt.few_shot",
                expected=f"0..{len(train)}",
            )
        demos = pick_demonstrations(train, cfg.few_shot, seed)
        return cls(cfg.template or "", [cfg.words(label) for label in labels], demos, cfg.separator)

    def to_json(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "words": self.words,
            "demonstrations": [{"text": t, "label": y} for t, y in self.demonstrations],
            "separator": self.separator,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prompt:
        demos = [(d["text"], int(d["label"])) for d in data["demonstrations"]]
        return cls(data["template"], data["words"], demos, data["separator"])

    def candidates(self, tokenizer: Any) -> list[list[list[int]]]:
        """Token ids of every label word: ``[label][word] → ids`` (no special tokens)."""
        result = []
        for words in self.words:
            ids = [_ids(tokenizer, word) for word in words]
            empty = [w for w, i in zip(words, ids) if not i]
            if empty:
                raise UserError(
                    f"label words {empty} encode to no tokens",
                    field="prompt.verbalizer",
                    expected="words the tokenizer can spell",
                )
            result.append(ids)
        return result

    def encode(self, tokenizer: Any, texts: Sequence[str], max_seq_len: int) -> tuple[list[list[int]], int]:
        """Prompt token ids per text (demonstrations, then the templated text) and how many texts were cut."""
        from glmtune.data.encode import _special_layout

        # The leading specials a text gets for the classification head (BOS); never a trailing EOS: the answer
        # comes right after the prompt.
        prepend, head, _tail = _special_layout(tokenizer)
        special = prepend or list(tokenizer("a", add_special_tokens=True)["input_ids"][:head])
        prefix, suffix = (_ids(tokenizer, part) for part in self.template.split("{text}"))
        separator = _ids(tokenizer, self.separator)
        demo_tail = [suffix, separator]
        fixed = len(special) + len(prefix) + len(suffix)
        demos: list[int] = []
        if self.demonstrations:
            # Each demonstration text gets an equal share of what is left after every fixed piece.
            fixed_demo = sum(len(prefix) + len(suffix) + len(separator) for _ in self.demonstrations)
            fixed_demo += sum(len(_ids(tokenizer, self.words[y][0])) for _, y in self.demonstrations)
            share = (max_seq_len - fixed - fixed_demo) // (len(self.demonstrations) + 1)
            if share < MIN_TEXT_TOKENS:
                raise UserError(
                    f"got {max_seq_len}: {len(self.demonstrations)} demonstrations leave no room for the text",
                    field="train.max_seq_len",
                    expected=f"more than {fixed + fixed_demo + MIN_TEXT_TOKENS * (len(self.demonstrations) + 1)}",
                )
            for text, label in self.demonstrations:
                word = _ids(tokenizer, self.words[label][0])
                demos += prefix + _ids(tokenizer, text)[:share] + demo_tail[0] + word + demo_tail[1]
        budget = max_seq_len - fixed - len(demos)
        if budget < 1:
            raise UserError(
                f"got {max_seq_len}, which leaves no room for the text around the prompt template",
                field="train.max_seq_len",
                expected=f"more than {fixed + len(demos)}",
            )
        rows, truncated = [], 0
        for text in texts:
            ids = _ids(tokenizer, text)
            if len(ids) > budget:
                truncated += 1
                ids = ids[:budget]
            rows.append(list(special) + demos + prefix + ids + suffix)
        return rows, truncated

    def render(self, text: str) -> str:
        """The prompt as text (for logs and docs): demonstrations, then ``text`` in the template."""
        demos = [
            self.template.replace("{text}", t) + self.words[y][0] + self.separator
            for t, y in self.demonstrations
        ]
        return "".join(demos) + self.template.replace("{text}", text)


def pick_demonstrations(train: Sequence[Any], k: int, seed: int) -> list[tuple[str, int]]:
    """``k`` training examples, seeded, taking labels in turn (so every label shows up when k allows)."""
    if k == 0:
        return []
    rng = random.Random(seed)
    by_label: dict[int, list[Any]] = {}
    for example in train:
        by_label.setdefault(example.label, []).append(example)
    for examples in by_label.values():
        rng.shuffle(examples)
    order = sorted(by_label)
    chosen: list[Any] = []
    while len(chosen) < k:
        for label in order:
            if by_label[label] and len(chosen) < k:
                chosen.append(by_label[label].pop())
    rng.shuffle(chosen)
    return [(example.text, example.label) for example in chosen]


def encode_prompt_examples(tokenizer: Any, examples: Sequence[Any], prompt: Prompt, max_seq_len: int) -> Any:
    """``data.Example``s → a ``ClassificationDataset`` of prompts (``num_truncated``: texts cut)."""
    from glmtune.data.encode import ClassificationDataset
    from glmtune.models.load import pad_token_id

    ids, truncated = prompt.encode(tokenizer, [example.text for example in examples], max_seq_len)
    labels = [example.label for example in examples]
    return ClassificationDataset(ids, labels, pad_token_id(tokenizer), truncated)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
