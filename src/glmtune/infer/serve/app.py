"""The FastAPI app: OpenAI-compatible endpoints over the served models and the batching scheduler.

``GET /health`` · ``GET /metrics`` (Prometheus; serve/monitor.py) · ``GET /v1/models`` ·
``POST /v1/chat/completions`` · ``POST /v1/completions`` · ``POST /v1/classify`` (glmtune's extension). Every
error is OpenAI's error object with a 4xx status (a 500 only for a bug in glmtune, without a traceback): bad JSON
or types 400, a ``Host`` not allowed 400, missing or wrong API key 401 (every path but ``/health``;
``/openapi.json`` included, ``/metrics`` unless ``metrics_public``; no ``/docs``), unknown model 404, timeout 408,
body too large 413, queue full 429. This module wires routes, middleware and the worker's lifespan;
handlers.py does each endpoint's work, replies.py builds responses, limits.py holds ``Limits``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from glmtune.infer.serve import protocol as p
from glmtune.infer.serve.guard import (
    OPEN_PATHS,
    APIError,
    Guard,
    check_api_key,
    host_names,
    install_error_handlers,
)
from glmtune.infer.serve.handlers import Handlers
from glmtune.infer.serve.limits import Limits
from glmtune.infer.serve.monitor import AccessMonitor, Monitor
from glmtune.infer.serve.registry import ServedModel
from glmtune.infer.serve.replies import reply_message as _reply_message  # noqa: F401 (old home; tests import it)
from glmtune.infer.serve.scheduler import Scheduler


def create_app(
    served: dict[str, ServedModel],
    limits: Limits | None = None,
    api_key: str | None = None,
    allowed_hosts: list[str] | None = None,
    *,
    metrics_public: bool = False,
    log_content: bool = False,
) -> FastAPI:
    """The app over loaded models (``serve.registry.load_models``); its lifespan starts and drains the worker.
    ``allowed_hosts``: ``Host`` names answered besides the loopback ones (``guard.host_names``);
    ``metrics_public``: ``/metrics`` without the API key; ``log_content``: prompts and replies in the access log."""
    limits = limits or Limits()
    check_api_key(api_key)
    monitor = Monitor(served, limits.max_queue, log_content=log_content)
    scheduler = Scheduler(
        {name: model.runner() for name, model in served.items()},
        max_batch_size=limits.max_batch_size,
        max_queue=limits.max_queue,
        batch_wait_s=limits.batch_wait_s,
        on_batch=monitor.observe_batch,
    )
    monitor.watch(scheduler)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop)  # in-flight requests have finished: uvicorn waited for them

    app = FastAPI(title="glmtune", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler, app.state.served, app.state.limits = scheduler, served, limits
    app.state.monitor = monitor
    hosts = host_names(allowed_hosts or ())
    open_paths = (*OPEN_PATHS, "/metrics") if metrics_public else OPEN_PATHS
    guard = dict(api_key=api_key, max_bytes=limits.max_body_bytes, allowed_hosts=hosts, open_paths=open_paths)
    app.add_middleware(Guard, **guard)
    app.add_middleware(AccessMonitor, monitor=monitor)  # added last: outermost, so Guard's refusals count too
    install_error_handlers(app)
    api = Handlers(served, limits, scheduler)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": list(served),
            "queue": {"waiting": scheduler.waiting, "max_queue": limits.max_queue},
            "stats": dict(scheduler.stats),
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        body, content_type = monitor.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> p.ModelList:
        cards = [p.ModelCard(id=name, created=p.now(), glmtune=m.describe()) for name, m in served.items()]
        return p.ModelList(data=cards)

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> p.ModelCard:
        if name not in served:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return p.ModelCard(id=name, created=p.now(), glmtune=served[name].describe())

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: p.ChatCompletionRequest, request: Request) -> Any:
        return await api.chat(body, request)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: p.CompletionRequest, request: Request) -> Any:
        return await api.complete(body, request)

    @app.post("/v1/classify")
    async def classify(body: p.ClassifyRequest, request: Request) -> p.ClassifyResponse:
        return await api.classify(body, request)

    return app


__all__ = ["Limits", "create_app"]
