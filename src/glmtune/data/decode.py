"""A data file's bytes → text, in the encoding ``data.encoding`` names or the one ``auto`` finds.

``auto`` tries, by strict decoding (never guessing silently past a bad byte): UTF-8 (a byte-order mark is
dropped), UTF-16 when the file starts with its byte-order mark (Excel's "Unicode text"), then GB18030, the
superset of GBK and GB2312 that Excel on Chinese Windows writes. Any encoding but UTF-8 is logged as a warning,
so a wrong guess is visible. Bytes that fit none is one UserError at the line and column of the first byte that
is not UTF-8 (or not the named encoding), with charset-normalizer's guess of the encoding when it has one.
"""

from __future__ import annotations

import codecs
import logging
from pathlib import Path

from glmtune.core.errors import UserError

logger = logging.getLogger(__name__)


def _position(data: bytes, start: int, encoding: str) -> tuple[int, int]:
    """The 1-based line and column of byte ``start``, counted in the text before it."""
    before = data[:start].decode(encoding, errors="replace")
    line = before.count("\n") + 1
    return line, len(before) - (before.rfind("\n") + 1) + 1


def _guess(data: bytes) -> str | None:
    """charset-normalizer's best guess of the encoding, or None."""
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - a pinned dependency
        return None
    best = from_bytes(data[:200_000]).best()
    return best.encoding if best is not None else None


def _bad_bytes(error: UnicodeDecodeError, path: Path, name: str, expected: str) -> UserError:
    """The error at the first bad byte (``error.object``: the bytes decoded, after any byte-order mark)."""
    data = bytes(error.object)
    line, column = _position(data, error.start, error.encoding or "utf-8")
    return UserError(
        f"byte 0x{data[error.start]:02x} at column {column} is not {name}",
        file=str(path),
        line=line,
        expected=expected,
    )


def decode(data: bytes, path: Path, encoding: str = "auto") -> str:
    """``data`` (the bytes of ``path``) as text; see the module docstring for ``auto``."""
    if encoding != "auto":
        codec = codecs.lookup(encoding).name
        codec = "utf-8-sig" if codec == "utf-8" else codec  # a byte-order mark is never part of the data
        try:
            return data.decode(codec)
        except UnicodeDecodeError as error:
            raise _bad_bytes(
                error, path, encoding, f"{encoding} text (data.encoding), or data.encoding: auto"
            ) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not data.startswith(
        codecs.BOM_UTF32_LE
    ):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise _bad_bytes(error, path, "UTF-16", "UTF-16 text (the file starts with its mark)") from None
        logger.warning("%s: read as UTF-16 (it starts with a UTF-16 byte-order mark)", path)
        return text
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as first:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            # A file with valid UTF-8 characters besides the bad bytes is damaged UTF-8: no other encoding fits.
            damaged = any(ord(c) > 127 and c != "\ufffd" for c in data.decode("utf-8", errors="replace"))
            guess = None if damaged else _guess(data)
            hint = f"; it looks like {guess}: set data.encoding: {guess}" if guess else ""
            raise _bad_bytes(
                first,
                path,
                "UTF-8",
                f"UTF-8 encoded text (or GB18030/GBK, or the encoding set in data.encoding){hint}",
            ) from None
        logger.warning("%s: not UTF-8; read as GB18030 (GBK); set data.encoding if that is wrong", path)
        return text
    logger.info("%s: read as UTF-8", path)
    return text


__all__ = ["decode"]
