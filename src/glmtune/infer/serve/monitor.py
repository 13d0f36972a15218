"""What an operator watches: Prometheus metrics at ``GET /metrics`` and one JSON access-log line per request.

``Monitor`` owns the app's own ``prometheus_client.CollectorRegistry`` (never the process-wide default one, so
several apps in one process keep their own counts) and the access log. ``AccessMonitor`` is the outermost ASGI
middleware: it gives every request a ``RequestRecord`` (``record_of(request)``) that the handlers fill in (model,
tokens, queue wait, time to first token, the content), answers with ``X-Request-Id``, and when the response has
been sent (for a stream: when it ends) counts it and logs it. Batches and queue waits are observed by the worker
(``Monitor.observe_batch``); queue depth is read from the scheduler at scrape time.

Labels stay bounded: ``route`` is the route's template (``/v1/models/{model}``, ``other`` for unknown paths),
``model`` a served model's name or empty (a request for an unknown model does not make a new series), ``status``
the HTTP status. Prompt and reply text are logged only with ``--log-content``. docs/monitoring.md lists it all.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

access_log = logging.getLogger("glmtune.serve.access")

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify")
PROBES = ("/health", "/metrics")  # logged at DEBUG: a scraper every few seconds would drown the requests
STATE_KEY = "glmtune_record"
# A client's X-Request-Id is kept when it is a plain token: it is echoed in a header and written to the log.
_SANE_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def route_of(path: str) -> str:
    """The route a path belongs to (a bounded label value)."""
    if path in ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` when it is a plain token (letters, digits, ``._:+/=-``, at most 128), else
    a new one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            given = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    """What one request did; the middleware starts it, the handlers fill it in, ``Monitor.finish`` reports it."""

    request_id: str
    method: str
    route: str
    started: float  # time.monotonic() when the request arrived
    status: int | None = None  # the HTTP status sent
    model: str = ""  # a served model's name, once the request chose one
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    inputs: int | None = None  # texts classified
    queue_wait_s: float | None = None  # the longest of its jobs' waits for a batch
    first_token_at: float | None = None  # time.monotonic() of its first generated token
    error: str | None = None  # OpenAI error code (or type) of a failure
    error_status: int | None = None  # a stream's error: its 200 was sent before the failure
    prompt: Any = None  # logged only with --log-content
    reply: Any = None

    def add_jobs(self, jobs: Iterable[Any]) -> None:
        """Take the queue wait and first-token time of the scheduler jobs that served this request."""
        for job in jobs:
            if job.started is not None:
                self.queue_wait_s = max(self.queue_wait_s or 0.0, job.started - job.created)
            if job.first_token_at is not None:
                first = self.first_token_at
                self.first_token_at = job.first_token_at if first is None else min(first, job.first_token_at)

    def stream_error(self, status: int, code: str | None) -> None:
        """A failure sent inside a stream (its HTTP status, 200, was already sent)."""
        self.error_status, self.error = status, code


def record_of(request: Any) -> RequestRecord:
    """The request's record (a detached one when the app runs without ``AccessMonitor``)."""
    record = request.scope.get("state", {}).get(STATE_KEY)
    if record is None:
        record = RequestRecord(uuid.uuid4().hex, request.method, route_of(request.url.path), time.monotonic())
    return record


class Monitor:
    """The app's metrics (in its own registry) and its access log."""

    def __init__(self, served: dict[str, Any], max_queue: int, *, log_content: bool = False):
        self.log_content = log_content
        self.registry = CollectorRegistry()
        reg = self.registry
        route_model = ["route", "model"]
        self.requests = Counter(
            "glmtune_requests",
            "HTTP requests answered, by route, model and status",
            [*route_model, "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "glmtune_request_duration_seconds",
            "Time from a request's arrival to its response's last byte (a stream's end)",
            route_model,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "glmtune_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first generated token",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            "glmtune_queue_wait_seconds",
            "Time a job waited in the queue for a batch",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self.prompt_tokens = Counter(
            "glmtune_prompt_tokens", "Prompt tokens of answered generation requests", ["model"], registry=reg
        )
        self.generated_tokens = Counter(
            "glmtune_generated_tokens", "Tokens generated for answered requests", ["model"], registry=reg
        )
        self.classified = Counter("glmtune_classified_texts", "Texts classified", ["model"], registry=reg)
        self.batch_size = Histogram(
            "glmtune_batch_size",
            "Jobs run together in one batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.rejected = Counter(
            "glmtune_rejected_requests",
            "Requests refused with a 4xx (bad request, key, "
            "unknown model, 408 timeout, 413, 429 queue full; a stream's error included)",
            [*route_model, "status"],
            registry=reg,
        )
        self.failed = Counter(
            "glmtune_failed_requests",
            "Requests that failed on the server's side (5xx, or a stream that ended with a generation error)",
            route_model,
            registry=reg,
        )
        self.queue_depth = Gauge("glmtune_queue_depth", "Requests waiting for a batch", registry=reg)
        self.running = Gauge("glmtune_running_requests", "Jobs in the batch being run", registry=reg)
        capacity = Gauge("glmtune_queue_capacity", "Waiting requests accepted before 429", registry=reg)
        capacity.set(max_queue)
        loaded = Gauge("glmtune_models_loaded", "Models served", registry=reg)
        loaded.set(len(served))
        info = Gauge("glmtune_model_info", "A served model (value 1)", ["model", "task"], registry=reg)
        for name, model in served.items():
            info.labels(name, model.task).set(1)
            for counter in (self.prompt_tokens, self.generated_tokens, self.classified):
                counter.labels(name)  # present at 0 from the start: rate() sees the first request

    def watch(self, scheduler: Any) -> None:
        """Read queue depth and the running batch from ``scheduler`` at each scrape."""
        self.queue_depth.set_function(lambda: scheduler.waiting)
        self.running.set_function(lambda: scheduler.stats["running"])

    # ---- from the worker thread
    def observe_batch(self, key: Any, jobs: list[Any]) -> None:
        model = str(key)
        self.batch_size.labels(model).observe(len(jobs))
        for job in jobs:
            self.queue_wait.labels(model).observe(job.started - job.created)

    # ---- from the middleware
    def finish(self, record: RequestRecord, ended: float) -> None:
        """Count the answered request and write its access-log line."""
        status, route, model = record.status or 0, record.route, record.model
        latency = ended - record.started
        self.requests.labels(route, model, str(status)).inc()
        self.latency.labels(route, model).observe(latency)
        ttft = None if record.first_token_at is None else record.first_token_at - record.started
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if model and status == 200 and record.error_status is None:
            if record.prompt_tokens:
                self.prompt_tokens.labels(model).inc(record.prompt_tokens)
            if record.completion_tokens:
                self.generated_tokens.labels(model).inc(record.completion_tokens)
            if record.inputs:
                self.classified.labels(model).inc(record.inputs)
        outcome = record.error_status or status
        if 400 <= outcome < 500 and outcome != 499:  # 499: the client left; nobody was refused
            self.rejected.labels(route, model, str(outcome)).inc()
        elif outcome >= 500:
            self.failed.labels(route, model).inc()
        level = logging.DEBUG if route in PROBES else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(
                level, json.dumps(self.line(record, latency, ttft), ensure_ascii=False, default=str)
            )

    def line(self, record: RequestRecord, latency: float, ttft: float | None) -> dict[str, Any]:
        """The access-log line's fields (content only with ``log_content``)."""
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": record.request_id,
            "method": record.method,
            "route": record.route,
            "model": record.model or None,
            "status": record.status,
            "stream": record.stream,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "latency_s": round(latency, 6),
            "queue_wait_s": None if record.queue_wait_s is None else round(record.queue_wait_s, 6),
            "ttft_s": None if ttft is None else round(ttft, 6),
            "error": record.error,
        }
        if record.inputs is not None:
            line["inputs"] = record.inputs
        if record.error_status is not None:
            line["error_status"] = record.error_status
        if self.log_content:
            line["prompt"], line["reply"] = record.prompt, record.reply
        return line

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (Prometheus text, or OpenMetrics) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class AccessMonitor:
    """The outermost ASGI middleware: a record per request, ``X-Request-Id`` on the response, and the count and
    log line once the response is sent (a stream: when it ends; a client that left: 499)."""

    def __init__(self, app: Any, monitor: Monitor):
        self.app, self.monitor = app, monitor

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(
            request_id(scope["headers"]), scope["method"], route_of(scope["path"]), time.monotonic()
        )
        scope.setdefault("state", {})[STATE_KEY] = record
        header = (b"x-request-id", record.request_id.encode("ascii"))

        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                try:
                    self.monitor.finish(record, time.monotonic())
                except Exception:  # noqa: BLE001 - counting a request must never keep its answer from going out
                    logging.getLogger("glmtune.serve").exception("could not count or log a request")

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif message["type"] == "http.response.body":
                if (record.status or 0) >= 400 and not record.error:
                    record.error = _error_code(message.get("body", b""))
                if not message.get("more_body", False):
                    finish()  # before the last byte goes: a client that has its answer can already see it counted
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            record.status = record.status or 500  # the error handler answers it outside this middleware
            raise
        finally:
            record.status = record.status or 499
            finish()


def _error_code(body: bytes) -> str | None:
    """The ``code`` (else ``type``) of an OpenAI error object, if ``body`` is one."""
    try:
        error = json.loads(body).get("error") or {}
        return error.get("code") or error.get("type")
    except (ValueError, AttributeError):
        return None


def install_access_log(stream: Any = None) -> None:
    """Write the access log's JSON lines, bare, to ``stream`` (stdout) at INFO (once per process)."""
    if not any(getattr(handler, "_glmtune_access", False) for handler in access_log.handlers):
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._glmtune_access = True  # type: ignore[attr-defined]
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


__all__ = ["AccessMonitor", "Monitor", "RequestRecord", "install_access_log", "record_of", "request_id"]
