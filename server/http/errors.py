"""THE ``{"error"}`` renderer of the HTTP transport: the app, the fast endpoint and the drain answer with it.

Raw ASGI: the same bytes and headers whichever layer answers (a Starlette ``Response`` would add nothing
but cost). FastAPI's own errors (unknown paths, anything unexpected inside it) go through
:func:`install_error_handlers`, which renders them here too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ServerError

log = logging.getLogger("server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = "application/json"
# A path in the log is cut to this length: a 5 KB URL is the client's problem, not a log line's.
MAX_LOGGED_PATH = 200
_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
INTERNAL = "Internal server error."
_GENERIC = {404: "Not found.", 405: "Method not allowed."}


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def send_reply(
    send: Send, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> None:
    """One whole response: `headers` first, then length and type (the order a Starlette Response uses)."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw.append((_CONTENT_LENGTH, str(len(body)).encode()))
    raw.append((_CONTENT_TYPE, content_type.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
    await send_reply(send, status, error_body(message), JSON, headers)


async def send_server_error(send: Send, exc: ServerError) -> None:
    await send_error(send, exc.status_code, exc.message, exc.headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The same answer as a Starlette Response, for FastAPI's exception handlers."""
    return Response(error_body(message), status, dict(headers or {}), JSON)


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's own errors as ``{"error"}`` (never its default ``{"detail"}``)."""

    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> Response:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        message = _GENERIC.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path[:MAX_LOGGED_PATH])
        return error_response(500, INTERNAL)
