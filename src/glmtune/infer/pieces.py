"""Tokens as the text they add, and tokens grouped into words, for showing one value per token or per word.

Contract: works with any tokenizer through ``decode`` alone. A token's text is what decoding one more token adds
to the text so far (so byte-level BPE's ``Ġ`` and SentencePiece's ``▁`` come out as spaces); a token that stops
inside a multi-byte character adds no text yet (``texts`` holds "", ``pieces`` shows U+FFFD, as decoding does)
and belongs with the token that completes the character (which shows the whole character). Words: a new word starts at whitespace, at a special token, and at
each wide (CJK) character, so Chinese groups per character and Latin per space-separated word; a token that holds
several characters stays one unit (its value cannot honestly be split).
"""

from __future__ import annotations

import unicodedata
from typing import Any

REPLACEMENT = "\ufffd"  # what decoding shows for an incomplete UTF-8 sequence


def token_pieces(tokenizer: Any, ids: list[int]) -> tuple[list[str], list[str]]:
    """``(pieces, texts)``: per token, what to show (never empty) and the text it adds ("" while a character is
    incomplete; the ``texts`` join to the decoded sequence whenever decoding is prefix-stable)."""
    pieces, texts = [], []
    done = ""  # the decoded text so far, up to the last complete character
    for end in range(1, len(ids) + 1):
        # Decoding prefix by prefix is quadratic, but explained texts are at most max_seq_len tokens.
        text = tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith(REPLACEMENT) and not _is_lone_replacement(tokenizer, ids[end - 1]):
            texts.append("")  # the character continues in the next token
            pieces.append(REPLACEMENT)
            continue
        added = text[len(done) :] if text.startswith(done) else _alone(tokenizer, ids[end - 1])
        done = text
        texts.append(added)
        pieces.append(added or str(tokenizer.convert_ids_to_tokens(ids[end - 1])))
    return pieces, texts


def _alone(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _is_lone_replacement(tokenizer: Any, token_id: int) -> bool:
    """A token that decodes to U+FFFD by itself and is a whole token (an <unk>), not half a character."""
    return token_id == getattr(tokenizer, "unk_token_id", None)


def is_wide(char: str) -> bool:
    """A CJK (wide or full-width) character: its own word."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def word_groups(texts: list[str], special: list[bool]) -> list[list[int]]:
    """Token indices grouped into words, in order (every token in exactly one group; see the module's rules)."""
    groups: list[list[int]] = []
    pending: list[int] = []  # tokens of an incomplete character: they join the token that completes it
    last_text, last_special = "", True  # the last group's text so far; whether it is a special token
    for index, (text, is_special) in enumerate(zip(texts, special)):
        if not text and not is_special:
            pending.append(index)
            continue
        joins = (
            bool(groups)
            and not is_special
            and not last_special
            and (
                not last_text.strip()  # whitespace alone leads the word after it
                or not (
                    text[0].isspace() or is_wide(text[0]) or last_text[-1].isspace() or is_wide(last_text[-1])
                )
            )
        )
        if joins:
            groups[-1].extend([*pending, index])
            last_text += text
        else:
            groups.append([*pending, index])
            last_text = text
        pending, last_special = [], is_special
    if pending:  # a sequence cut inside a character
        groups.append(pending)
    return groups


__all__ = ["is_wide", "token_pieces", "word_groups"]
