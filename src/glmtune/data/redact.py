"""Privacy scrubbing (``data.redact``): personal data in texts → typed placeholders, before anything is encoded.

The placeholders are the text the model trains and is evaluated on instead (``PLACEHOLDERS``):

=============  ===============  ==========================================================================
type           placeholder      what is replaced
=============  ===============  ==========================================================================
``url``        ``[URL]``        ``http://``, ``https://``, ``ftp://`` links and ``www.`` addresses (trailing
                                punctuation such as ``.`` or ``)`` stays outside)
``email``      ``[EMAIL]``      ``name@domain.tld``
``id_card``    ``[ID_CARD]``    18-character resident ID numbers (GB 11643-1999) whose check character is right
                                (ISO 7064 MOD 11-2) and whose birth date (characters 7-14) is a real date
``bank_card``  ``[BANK_CARD]``  16-19 digits starting with 3-6 (the card networks' ranges) that pass the Luhn
                                check: bare, or in groups of four split by one space or hyphen each
``phone``      ``[PHONE]``      Chinese mobile numbers ``1[3-9]`` + 9 digits, optionally after ``+86``,
                                ``0086`` or ``86``, optionally split 3-4-4 by spaces or hyphens
``ip``         ``[IP]``         IPv4 (four parts of 0-255) and IPv6 (what ``ipaddress`` accepts)
=============  ===============  ==========================================================================

Types are applied in that order (``ORDER``) whatever order the config lists them in, each on the text the
previous one left: a link's own digits or ``@`` belong to ``[URL]``, a card number is never read as a phone.
Placeholders hold no digits, ``@`` or ``.``, so no later type matches inside one. Numbers are matched only whole,
never inside a longer run of digits, so an order number that contains a phone number stays as it is. Left alone on purpose: landlines, 15-digit first-generation ID numbers (no check
character), numbers failing their check, bare domains like ``example.com`` (too much like file names), names
and addresses (no pattern finds those reliably).

``Redactor`` counts what it replaced per type; ``redact_items`` runs it over one split.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from glmtune.core.config.model_data import REDACT_TYPES
from glmtune.core.errors import UserError
from glmtune.data.messages import Conversation, Message
from glmtune.data.summary import SplitCounts

T = TypeVar("T")

ORDER = ("url", "email", "id_card", "bank_card", "phone", "ip")  # the order types are applied in
assert set(ORDER) == set(REDACT_TYPES)
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in ORDER}
"""Type → its placeholder: ``[URL]``, ``[EMAIL]``, ``[ID_CARD]``, ``[BANK_CARD]``, ``[PHONE]``, ``[IP]``."""

# GB 11643-1999: weights of the first 17 digits, and the check character by (weighted sum mod 11).
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"

_URL_TAIL = ".,;:!?'\")]}>"  # punctuation that ends a sentence rather than the link
_PATTERNS = {
    # scheme or www., then URL characters (RFC 3986's, ASCII only, so a Chinese sentence right after ends it)
    "url": re.compile(
        r"(?:(?<![A-Za-z])(?:https?|ftp)://|(?<![A-Za-z0-9.])www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
        re.IGNORECASE,
    ),
    "email": re.compile(
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])"
    ),
    "id_card": re.compile(r"(?<!\d)\d{17}[0-9Xx](?!\d)"),
    # bare, or 4-4-4-4(-1..3) with one repeated separator (and no further group after it)
    "bank_card": re.compile(
        r"(?<!\d)(?:\d{16,19}(?!\d)|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?(?!\d|\1\d))"
    ),
    "phone": re.compile(r"(?<![\d+])(?:(?:\+|00)?86[ -]?)?1[3-9]\d(?:\d{8}|([ -])\d{4}\1\d{4})(?!\d)"),
    # IPv4: the last part may not continue as digits ("1.2.3.999") or as a further dotted part
    "ip": re.compile(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)"
        # IPv6 candidates (checked by ipaddress): hex groups and colons, maybe ending in dotted IPv4
        r"|(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![0-9A-Za-z:])"
    ),
}


def id_card_valid(number: str) -> bool:
    """An 18-character resident ID number with the right check character and a real birth date (GB 11643)."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(digit) * weight for digit, weight in zip(number[:17], ID_WEIGHTS))
    if ID_CHECK[total % 11] != number[17].upper():
        return False
    try:
        birth = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return 1800 <= birth.year


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number: every second digit from the right doubled."""
    if not digits.isdigit():
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _bank_card(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 16 <= len(digits) <= 19 and digits[0] in "3456" and luhn_valid(digits)


def _ip(match: str) -> bool:
    if ":" not in match:
        return True  # IPv4: the pattern already bounds every part
    try:
        ipaddress.IPv6Address(match)
    except ValueError:  # times (12:30:45), MAC addresses
        return False
    return any(c.isdigit() for c in match)  # "a::b", "dead::beef": words, however valid


_CHECKS: dict[str, Callable[[str], bool]] = {
    "id_card": id_card_valid,
    "bank_card": _bank_card,
    "ip": _ip,
}


class Redactor:
    """Replaces the personal data of ``kinds`` (types of ``REDACT_TYPES``) in texts, messages and conversations,
    counting what it replaced per type (``take``). Anything it returns is a new object; inputs are not changed."""

    def __init__(self, kinds: Iterable[str]):
        wanted = set(kinds)
        unknown = sorted(wanted - set(REDACT_TYPES))
        if unknown:
            raise UserError(
                f"unknown type {unknown[0]!r}",
                field="data.redact",
                expected="any of: " + ", ".join(REDACT_TYPES),
            )
        self.kinds = tuple(kind for kind in ORDER if kind in wanted)  # the fixed order (module docstring)
        self.counts: Counter[str] = Counter()

    def text(self, text: str) -> str:
        """``text`` with every match of the redactor's types replaced by its placeholder."""
        for kind in self.kinds:
            text = _PATTERNS[kind].sub(lambda match, kind=kind: self._replace(kind, match.group()), text)
        return text

    def _replace(self, kind: str, found: str) -> str:
        tail = ""
        if kind == "url":
            stripped = found.rstrip(_URL_TAIL)
            # a closing bracket that the link opened is part of it (wiki/Foo_(bar))
            while (
                stripped != found
                and found[len(stripped)] in ")]"
                and stripped.count("(") > stripped.count(")")
            ):
                stripped += found[len(stripped)]
            found, tail = stripped, found[len(stripped) :]
        check = _CHECKS.get(kind)
        if check is not None and not check(found):
            return found + tail
        self.counts[kind] += 1
        return PLACEHOLDERS[kind] + tail

    def value(self, value: Any) -> Any:
        """Every string inside a JSON-like value (dicts, lists) redacted; keys and other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value

    def message(self, message: Message) -> Message:
        """A turn with its content and its tool calls' argument values redacted (function names stay)."""
        calls = message.tool_calls
        if calls:
            calls = [self._call(call) for call in calls]
        return dataclasses.replace(message, content=self.text(message.content), tool_calls=calls)

    def _call(self, call: dict[str, Any]) -> dict[str, Any]:
        function = call.get("function")
        if not isinstance(function, dict) or "arguments" not in function:
            return call
        return {**call, "function": {**function, "arguments": self.value(function["arguments"])}}

    def conversation(self, conversation: Conversation) -> Conversation:
        """Every message of a conversation redacted (the tool schemas are definitions, not data: kept)."""
        return dataclasses.replace(conversation, messages=[self.message(m) for m in conversation.messages])

    def texted(self, item: T) -> T:
        """A dataclass with a ``text`` field (a classification example) with that text redacted."""
        return dataclasses.replace(item, text=self.text(item.text))  # type: ignore[attr-defined]

    def preference(self, example: T) -> T:
        """A preference example (``prompt`` messages, ``chosen``, ``rejected`` or None) with every message
        redacted."""
        rejected = example.rejected  # type: ignore[attr-defined]
        return dataclasses.replace(
            example,  # type: ignore[type-var]
            prompt=[self.message(m) for m in example.prompt],  # type: ignore[attr-defined]
            chosen=self.message(example.chosen),  # type: ignore[attr-defined]
            rejected=None if rejected is None else self.message(rejected),
        )

    def take(self) -> dict[str, int]:
        """What was replaced since the last ``take``, per type of the redactor (zeros included), then reset."""
        counts = {kind: self.counts[kind] for kind in self.kinds}
        self.counts.clear()
        return counts


def redact_items(
    items: Sequence[T], kinds: Sequence[str], redact: Callable[[Redactor, T], T]
) -> tuple[list[T], dict[str, int] | None]:
    """``items`` through ``redact`` (e.g. ``Redactor.conversation``) and the replacements per type; no ``kinds``:
    the items as they are and None (redaction is off)."""
    if not kinds:
        return list(items), None
    redactor = Redactor(kinds)
    return [redact(redactor, item) for item in items], redactor.take()


def redact_splits(
    splits: dict[str, Sequence[T]],
    kinds: Sequence[str],
    redact: Callable[[Redactor, T], T],
    counts: Mapping[str, SplitCounts],
) -> list[list[T]]:
    """``redact_items`` per split: the splits' items, in the order given, each split's replacements per type
    recorded in ``counts[name].redacted`` (``data_summary.json``; left None while ``kinds`` is empty)."""
    out = []
    for name, items in splits.items():
        done, counts[name].redacted = redact_items(items, kinds, redact)
        out.append(done)
    return out


__all__ = [
    "ID_CHECK",
    "ID_WEIGHTS",
    "ORDER",
    "PLACEHOLDERS",
    "Redactor",
    "id_card_valid",
    "luhn_valid",
    "redact_items",
    "redact_splits",
]
