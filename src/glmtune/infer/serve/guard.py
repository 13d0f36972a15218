"""What every request passes before the endpoints: the API key and the body size (an ASGI middleware), and the
error handlers that turn every failure into OpenAI's error object (never a traceback)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmtune.infer.serve import protocol as p

log = logging.getLogger("glmtune.serve")


class APIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", *, param=None, code=None
    ):
        super().__init__(message)
        self.status, self.body = status, p.error_body(message, type, param=param, code=code)


# =========================================================================== guard: API key, body size


class Guard:
    """ASGI middleware run before routing and body parsing: the API key (401) on ``/v1/``, then the body size
    (413; the body is read here, at most ``max_bytes``, and handed on)."""

    def __init__(self, app: Any, api_key: str | None, max_bytes: int):
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), self.api_key):
                message = (
                    "Incorrect API key provided" if given else "Missing API key (Authorization: Bearer KEY)"
                )
                await _reply(scope, receive, send, APIError(401, message, code="invalid_api_key"))
                return
        length = headers.get("content-length", "")
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
        first = (error.errors() or [{}])[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            body = p.error_body(
                f"malformed JSON: {reason}".strip(": "), "invalid_request_error", code="invalid_json"
            )
            return JSONResponse(body, status_code=400)
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
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


__all__ = ["APIError", "Guard", "install_error_handlers"]
