"""What every request passes before the endpoints: the ``Host`` header, the API key and the body size (an ASGI
middleware), and the error handlers that turn every failure into OpenAI's error object (never a traceback).

* ``Host`` must name this server: loopback names by default (``localhost``, ``127.0.0.1``, ``[::1]``, any port),
  more with ``--allowed-hosts`` (``*`` for any). A page on another site whose name was rebound to this address
  (DNS rebinding) sends its own name, and gets 400.
* The key, when one is set, guards every path but ``/health`` (``/openapi.json`` and ``/metrics`` included, unless
  ``--metrics-public``); it is compared as bytes, in constant time, so any header value is a 401 or a pass, never an
  error.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmtune.core.errors import UserError
from glmtune.infer.serve import protocol as p

log = logging.getLogger("glmtune.serve")


class APIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", *, param=None, code=None
    ):
        super().__init__(message)
        self.status, self.body = status, p.error_body(message, type, param=param, code=code)


# =========================================================================== guard: host, API key, body size

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
OPEN_PATHS = ("/health",)  # answered without the key: probes (and /metrics with --metrics-public)


def check_api_key(key: str | None) -> None:
    """A key clients can send in a header: printable ASCII, no spaces (refused at start-up, not per request)."""
    if key is not None and not (key and all("!" <= char <= "~" for char in key)):
        raise UserError(
            "the API key has characters an HTTP header cannot carry",
            field="--api-key",
            expected="ASCII letters, digits and punctuation, no spaces",
        )


def host_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` names the server answers: the loopback names and ``extra`` (``--allowed-hosts``, comma-separated
    entries accepted; ``*`` any host, ``*.example.com`` its subdomains; IPv6 with or without brackets)."""
    names = set(LOOPBACK_HOSTS)
    for entry in extra:
        for name in entry.split(","):
            name = name.strip().lower().rstrip(".")
            if ":" in name and not name.startswith("["):
                name = f"[{name}]"
            if name:
                names.add(name)
    return frozenset(names)


def _host_allowed(host: bytes, allowed: frozenset[str]) -> bool:
    if "*" in allowed:
        return True
    name = host.decode("latin-1").strip().lower()  # "name", "name:port", "[v6]" or "[v6]:port"
    name = name.partition("]")[0] + "]" if name.startswith("[") else name.partition(":")[0]
    name = name.rstrip(".")
    if name in allowed:
        return True
    return any(pattern.startswith("*.") and name.endswith(pattern[1:]) for pattern in allowed)


class Guard:
    """ASGI middleware run before routing and body parsing: the ``Host`` (400), the API key (401) on every path
    but ``open_paths``, then the body size (413; the body is read here, at most ``max_bytes``, and handed on)."""

    def __init__(
        self,
        app: Any,
        api_key: str | None,
        max_bytes: int,
        allowed_hosts: frozenset[str] = frozenset(LOOPBACK_HOSTS),
        open_paths: tuple[str, ...] = OPEN_PATHS,
    ):
        self.app, self.max_bytes, self.allowed_hosts = app, max_bytes, allowed_hosts
        self.open_paths = open_paths
        self.api_key = None if api_key is None else api_key.encode("ascii")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}  # bytes: compared as sent
        if not _host_allowed(headers.get(b"host", b""), self.allowed_hosts):
            message = "this server does not answer for that Host (glmtune serve --allowed-hosts adds names)"
            await _reply(scope, receive, send, APIError(400, message, param="Host", code="host_not_allowed"))
            return
        if self.api_key is not None and scope["path"] not in self.open_paths:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.api_key):
                message = (
                    "Incorrect API key provided" if given else "Missing API key (Authorization: Bearer KEY)"
                )
                await _reply(scope, receive, send, APIError(401, message, code="invalid_api_key"))
                return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _reply(scope, receive, send, self._too_large())
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _reply(scope, receive, send, self._too_large())
                return
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> APIError:
        return APIError(413, f"request body over {self.max_bytes} bytes", code="request_too_large")


async def _reply(scope: dict, receive: Any, send: Any, error: APIError) -> None:
    await JSONResponse(error.body, status_code=error.status)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # The most specific error: where a union (str | list of parts) failed, its deepest branch says why; the
        # branch's tag ("list[ContentPart]") is pydantic's, not a field the client wrote.
        first = max(error.errors() or [{}], key=lambda item: len(item.get("loc", ())))
        loc = [str(part) for part in first.get("loc", ()) if part != "body" and "[" not in str(part)]
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            body = p.error_body(
                f"malformed JSON: {reason}".strip(": "), "invalid_request_error", code="invalid_json"
            )
            return JSONResponse(body, status_code=400)
        param = ".".join(loc) or None
        # pydantic words a validator's ValueError "Value error, ...": the reason alone reads better
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        message = f"{param}: {message}" if param else message
        return JSONResponse(p.error_body(message, "invalid_request_error", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        body = p.error_body(str(error.detail), "invalid_request_error", code=code)
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(p.error_body("internal server error", "server_error"), status_code=500)


__all__ = ["LOOPBACK_HOSTS", "APIError", "Guard", "check_api_key", "host_names", "install_error_handlers"]
