"""The scheduler between the HTTP handlers and the model: a bounded queue and one worker thread that batches.

Handlers (on the asyncio loop) ``submit`` a ``Job`` and read its events; the worker thread takes the oldest
waiting job and every other waiting job for the same served model (up to ``max_batch_size``), and runs them as
one batch (``serve.rows.generate_rows`` for generation, one forward pass for classification). While a batch runs,
new requests wait for the next one: this is request-level (dynamic) batching, not per-step continuous batching,
so a request that arrives mid-batch waits at most for the batch's longest reply (bounded by the server's
``max_tokens`` ceiling). Rows that finish early are answered at once.

All model work happens on the one worker thread: no lock around the model, no two forward passes competing for
the CPU, and switching the active adapter between batches is safe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("glmtune.serve")


class QueueFull(Exception):
    """More requests are waiting than the server accepts (answered with HTTP 429)."""


@dataclass
class Event:
    kind: str  # "text" (a streamed piece), "done" (the result), "error" (an exception)
    value: Any


class Job:
    """One request for the worker: what to run (``payload``), on which served model (``key``), and the events
    the worker sends back to the asyncio loop that waits for them. Implements ``serve.rows.Row``."""

    def __init__(
        self, key: Hashable, payload: Any, loop: asyncio.AbstractEventLoop, *, wants_text: bool = False
    ):
        self.key, self.payload, self.loop = key, payload, loop
        self.request = payload  # the RowRequest, for serve.rows
        self.wants_text = wants_text
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.created = time.monotonic()
        self.started: float | None = None  # when the worker took it into a batch
        self.first_token_at: float | None = None  # when its first token came (serve.monitor reads it)
        self._cancelled = threading.Event()
        self.finished = False

    # ---- from the worker thread
    def _put(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def emit_text(self, text: str) -> None:
        self._put(Event("text", text))

    def emit_done(self, result: Any) -> None:
        self.finished = True
        self._put(Event("done", result))

    def emit_error(self, error: BaseException) -> None:
        self.finished = True
        self._put(Event("error", error))

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    # ---- from the handler
    def cancel(self) -> None:
        """The reader left (disconnect, timeout): drop the job if waiting, end its row at the next step if running."""
        self._cancelled.set()


Runner = Callable[[list[Job]], None]


class Scheduler:
    """A bounded queue of jobs and the worker thread that runs them in batches (see the module notes)."""

    def __init__(
        self,
        runners: dict[Hashable, Runner],
        *,
        max_batch_size: int = 8,
        max_queue: int = 64,
        batch_wait_s: float = 0.05,
        on_batch: Callable[[Hashable, list[Job]], None] | None = None,
    ):
        """``on_batch(key, jobs)``: called on the worker thread as each batch starts (``serve.monitor``)."""
        self.runners, self.on_batch = runners, on_batch
        self.max_batch_size, self.max_queue, self.batch_wait_s = max_batch_size, max_queue, batch_wait_s
        self._waiting: deque[Job] = deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"running": 0, "completed": 0, "cancelled": 0, "batches": 0, "largest_batch": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="glmtune-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then end the worker."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        if job.key not in self.runners:
            raise KeyError(job.key)
        with self._condition:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            self._drop_cancelled()  # a timed-out or abandoned request no longer takes a place
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the limit is {self.max_queue})")
            self._waiting.append(job)
            self._condition.notify_all()

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job and the live jobs waiting for the same model; None when stopping with none left."""
        with self._condition:
            while True:
                self._drop_cancelled()
                if self._waiting:
                    # Give requests that arrive together a moment to share the batch (bounded: counted from the
                    # oldest job's arrival, so no request waits more than batch_wait_s for company).
                    deadline = self._waiting[0].created + self.batch_wait_s
                    while len(self._waiting) < self.max_batch_size and not self._stopping:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._condition.wait(left)
                    self._drop_cancelled()
                    if self._waiting:
                        break
                elif self._stopping:
                    return None
                else:
                    self._condition.wait()
            key = self._waiting[0].key
            batch = [job for job in self._waiting if job.key == key][: self.max_batch_size]
            taken = {id(job) for job in batch}
            self._waiting = deque(job for job in self._waiting if id(job) not in taken)
            self.stats["running"] = len(batch)
            now = time.monotonic()
            for job in batch:
                job.started = now
            return batch

    def _drop_cancelled(self) -> None:
        live = deque(job for job in self._waiting if not job.is_cancelled())
        self.stats["cancelled"] += len(self._waiting) - len(live)
        self._waiting = live

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            if self.on_batch is not None:
                try:
                    self.on_batch(batch[0].key, batch)
                except Exception:  # noqa: BLE001 - counting a batch must never stop the worker
                    log.exception("the batch observer failed")
            try:
                self.runners[batch[0].key](batch)
            except Exception as error:  # noqa: BLE001 - a bug in one batch must not end the server
                for job in batch:
                    if not job.finished:
                        job.emit_error(error)
            for job in batch:
                self.stats["cancelled" if job.is_cancelled() else "completed"] += 1
            self.stats["running"] = 0


__all__ = ["Event", "Job", "QueueFull", "Scheduler"]
