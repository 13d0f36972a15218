"""``Limits``: what one request may ask for, and how the server queues and batches.

One dataclass, filled from ``glmtune serve`` flags; its checks raise ``UserError`` naming the flag,
so a bad value stops the server before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from glmtune.core.errors import UserError


@dataclass
class Limits:
    """What one request may ask for, and how the server queues and batches (``glmtune serve --help``)."""

    max_body_bytes: int = 1 << 20
    max_tokens: int = 1024  # ceiling on a request's max_tokens (and the default's)
    max_messages: int = 128
    max_inputs: int = 64  # texts per /v1/classify request, prompts per /v1/completions request
    timeout_s: float = 300.0  # per request, queueing included
    max_queue: int = 64  # waiting requests; more → 429
    max_batch_size: int = 8
    batch_wait_s: float = 0.05

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if name == "batch_wait_s" and value < 0:
                raise UserError(f"got {value * 1000:g}", field="--batch-wait-ms", expected="a number >= 0")
            if name != "batch_wait_s" and not value > 0:
                flag = "--timeout" if name == "timeout_s" else "--" + name.replace("_", "-")
                raise UserError(f"got {value:g}", field=flag, expected="a positive number")


__all__ = ["Limits"]
