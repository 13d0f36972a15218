"""``glmtune serve RUN_DIR|MODEL ...``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over trained runs.

protocol.py (the wire format) · guard.py (auth, limits, error objects) · app.py (the routes) · handlers.py (each
endpoint's work) · limits.py · replies.py (response builders) · scheduler.py (queue + batching worker) · batch.py
(one batched ``generate`` over requests with their own settings) · registry.py (what is served, by name) ·
monitor.py (``/metrics`` and the JSON access log).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import threading

from glmtune.core.errors import UserError

API_KEY_ENV = "GLMTUNE_API_KEY"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, made before any model loads: a port in use fails in a second, with one
    line, and the socket handed to uvicorn cannot be taken in between."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        reason = "another process is listening there" if error.errno == errno.EADDRINUSE else error.strerror
        raise UserError(
            f"cannot listen on {host}:{port}: {reason}", field="--port", expected="a free port (or --port 0)"
        ) from None
    except (OverflowError, socket.gaierror) as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {error}", field="--host/--port") from None
    return sock


def serve(
    targets: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits=None,
    template: str | None = None,
    log_level: str = "info",
    allowed_hosts: list[str] | None = None,
    metrics_public: bool = False,
    log_content: bool = False,
) -> None:
    """Bind, load every target, print where it serves, and serve until SIGINT/SIGTERM (uvicorn's graceful
    shutdown: no new connections, in-flight requests finish, then the worker drains and stops).

    ``allowed_hosts``: ``Host`` names answered besides the loopback ones and ``host`` itself (when it is not a
    wildcard address); ``["*"]`` answers any. ``metrics_public``: ``/metrics`` answered without the key;
    ``log_content``: prompts and replies in the access log (one JSON line per request on stdout, which replaces
    uvicorn's own access log)."""
    import uvicorn

    from glmtune.infer.serve.app import Limits, create_app
    from glmtune.infer.serve.guard import check_api_key
    from glmtune.infer.serve.monitor import install_access_log
    from glmtune.infer.serve.registry import load_models

    limits = limits or Limits()
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    check_api_key(api_key)  # before the port and the models: a key no client could send is one line, now
    hosts = [*(allowed_hosts or ()), *([] if host in ("0.0.0.0", "::", "") else [host])]
    sock = bind(host, port)
    try:
        served = load_models(targets, template)
        app = create_app(
            served, limits, api_key, hosts, metrics_public=metrics_public, log_content=log_content
        )
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,  # serve.monitor writes one JSON line per request instead
            timeout_graceful_shutdown=int(limits.timeout_s) + 5,
            h11_max_incomplete_event_size=limits.max_body_bytes,
        )
        hide_query_strings()
        install_access_log()
        bound_host, bound_port = sock.getsockname()[:2]
        names = ", ".join(served)
        auth = " (API key required)" if api_key else ""
        print(f"glmtune: serving {names} on http://{bound_host}:{bound_port}{auth}", flush=True)
        with _exit_zero_after_signals():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class _NoQueryStrings(logging.Filter):
    """uvicorn's access-log line without the query string: a key or token sent as ``?api_key=...`` stays out of
    the log. uvicorn logs ``(client, method, path?query, http_version, status)``; the path keeps its place."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].partition("?")[0], *args[3:])
        return True


def hide_query_strings() -> None:
    """Drop query strings from uvicorn's access log (once per process; after ``uvicorn.Config`` set up logging)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, _NoQueryStrings) for existing in access.filters):
        access.addFilter(_NoQueryStrings())


@contextlib.contextmanager
def _exit_zero_after_signals():
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was there
    before it: make that handler a clean exit (code 0), not a KeyboardInterrupt traceback or death by signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stopped(signum: int, frame: object) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["API_KEY_ENV", "bind", "hide_query_strings", "serve"]
