"""User mistakes become one clear line and exit code 2; this is the one place that does it."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

EXIT_USER_ERROR = 2

# How writers that wrap the OS error in their own exception say "disk full": torch's zip writer (RuntimeError
# "unexpected pos" / "file write failed"), safetensors' SafetensorError ("No space left on device (os error 28)").
_DISK_FULL_MESSAGES = ("unexpected pos", "file write failed", "no space left", "os error 28", "disk quota")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS,)
_DENIED = (errno.EACCES, errno.EPERM)


class UserError(Exception):
    """A mistake the user can fix (bad file, bad config, bad path). Never a bug in glmtune.

    The message is built from its parts so every error reads the same way:
    ``data.jsonl:12: field 'label': got 'x'; expected one of: neg, pos``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.message, self.file, self.line, self.field, self.expected = message, file, line, field, expected
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f"field '{field}': " if field is not None else ""
        tail = f"; expected {expected}" if expected else ""
        # One line, always: newlines in user data must not break the format.
        super().__init__(" ".join(f"{where}{what}{message}{tail}".split("\n")))


def from_os_error(error: BaseException, path: Any = None) -> UserError | None:
    """An OS failure the user can fix (disk full, a read-only or permission-denied folder) as a UserError naming
    the file; None for anything else (a bug, which keeps its traceback). ``path``: the file when the error has none.
    """
    code = error.errno if isinstance(error, OSError) else None
    where = (getattr(error, "filename", None) if isinstance(error, OSError) else None) or path
    where = str(where) if where is not None else None
    if code in _DISK_FULL or (
        code is None and any(text in str(error).lower() for text in _DISK_FULL_MESSAGES)
    ):
        return UserError("no space left on the disk", file=where, expected="free space, or another --output")
    if code in _READ_ONLY:
        return UserError("read-only file system", file=where, expected="a writable folder (--output)")
    if code in _DENIED:
        return UserError(
            "permission denied", file=where, expected="access to it (its permissions, or another --output)"
        )
    return None


@contextmanager
def os_errors_are_user_errors(path: Any = None) -> Iterator[None]:
    """Within the block, disk full / read-only / permission denied become one line (``from_os_error``)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        user = from_os_error(error, path)
        if user is None:
            raise
        raise user from None


def report_and_exit(error: UserError) -> None:
    """Print the one-line message to stderr and exit with code 2 (no traceback)."""
    print(f"glmtune: error: {error}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def user_errors_exit(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for CLI entry points: UserError → one line on stderr, exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as error:
            report_and_exit(error)

    return wrapper
