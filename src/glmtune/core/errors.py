"""User mistakes become one clear line and exit code 2; this is the one place that does it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

EXIT_USER_ERROR = 2


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
