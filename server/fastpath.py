"""The hot path: inference POSTs answered straight from ASGI, in front of FastAPI.

Under load the FastAPI/Starlette stack (middlewares, routing, dependency solving, Request and Response
objects) cost several times the inference itself per request (profiled in docs/performance.md). So
:class:`EnsembleApp` answers ``POST /v2/models/{m}[/versions/{v}]/infer`` and ``POST /v1/models/{m}:predict``
itself: it matches the path as Starlette would, streams the body in under the same 413 limit and calls the
same handler (:meth:`server.app.Handlers.run_infer`, which records every request's metrics) with the same
``{"error"}`` answers, inside the same drain middleware (server.drain). Everything else (other methods and
paths, ``/docs``, the lifespan) goes to FastAPI, which also keeps these routes for its OpenAPI schema and
serves them when CORS is configured.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect

from server.errors import BadRequest, PayloadTooLarge, RequestTimeout, ServerError
from server.protocol.binary import HEADER_LENGTH_HEADER

log = logging.getLogger("server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# (body, content type, Inference-Header-Content-Length or None)
Reply = tuple[bytes, str, int | None]

# Starlette compiles "{name}" to "[^/]+": the same paths match here as in the route table.
_V2_INFER = re.compile(r"/v2/models/([^/]+)/infer")
_V2_VERSION_INFER = re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer")
_V1_PREDICT = re.compile(r"/v1/models/([^/]+):predict")

_CONTENT_LENGTH = b"content-length"
_HEADER_LENGTH = b"inference-header-content-length"
TARGET = "ensemble.infer"  # scope key: (model, version or None, protocol)


class InferHandler(Protocol):
    async def run_infer(
        self,
        name: str,
        version: str | None,
        protocol: str,
        read: Callable[[int, float], Awaitable[bytes]],
        header_length: str | None,
    ) -> Reply: ...


def match(path: str) -> tuple[str, str | None, str] | None:
    """``(model, version or None, protocol)`` for an inference path, None for any other path."""
    if path.endswith("/infer"):
        if m := _V2_INFER.fullmatch(path):
            return m[1], None, "v2"
        if m := _V2_VERSION_INFER.fullmatch(path):
            return m[1], m[2], "v2"
    elif path.endswith(":predict") and (m := _V1_PREDICT.fullmatch(path)):
        return m[1], None, "v1"
    return None


async def read_asgi_body(
    receive: Receive, declared: str | None, limit: int, timeout_s: float | None
) -> bytes:
    """The body from ASGI messages, refusing (413) one over `limit` by its Content-Length or as it streams,
    and (408) one still incomplete after `timeout_s` (as server.app.read_body does).

    The timeout is a bare loop timer that cancels this task, not ``asyncio.timeout`` (4 µs a request, and
    almost every body is already complete when the request starts)."""
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The request body is {declared} bytes; at most {limit} are accepted.")
    if timeout_s is None:
        return await _read_chunks(receive, limit)
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    # The timer only fires while this task waits (callbacks run between task steps), so a cancellation it
    # asks for always lands in the await below.
    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await _read_chunks(receive, limit)
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise RequestTimeout(f"The request body did not arrive within {timeout_s:.3g} seconds.") from None
        raise
    finally:
        timer.cancel()


async def _read_chunks(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: the whole body in one message
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is over {limit} bytes.")
        return body
    chunks, size = [body], len(body)
    while True:
        if size > limit:
            raise PayloadTooLarge(f"The request body is over {limit} bytes.")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            if size > limit:
                raise PayloadTooLarge(f"The request body is over {limit} bytes.")
            return b"".join(chunks)


async def send_reply(
    send: Send, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    # The headers a Starlette Response would send: its own first, then length and type.
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw.append((_CONTENT_LENGTH, str(len(body)).encode()))
    raw.append((b"content-type", content_type.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class InferEndpoint:
    """The ASGI app for the inference POSTs: ``scope[TARGET]`` holds what :func:`match` found."""

    def __init__(self, handler: InferHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, version, protocol = scope[TARGET]
        declared = header_length = None
        for key, value in scope["headers"]:
            if key == _CONTENT_LENGTH:
                declared = declared if declared is not None else value.decode("latin-1")
            elif key == _HEADER_LENGTH:
                header_length = header_length if header_length is not None else value.decode("latin-1")

        def read(limit: int, timeout_s: float) -> Awaitable[bytes]:
            return read_asgi_body(receive, declared, limit, timeout_s)

        try:
            body, content_type, out_header_length = await self.handler.run_infer(
                name, version, protocol, read, header_length
            )
        except ServerError as exc:
            error = orjson.dumps({"error": exc.message})
            await send_reply(send, exc.status_code, error, "application/json", exc.headers)
            return
        except ClientDisconnect:
            return  # nobody to answer; the handler has counted the request
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await send_reply(send, 500, orjson.dumps({"error": "Internal server error."}), "application/json")
            return
        extra = None if out_header_length is None else {HEADER_LENGTH_HEADER: str(out_header_length)}
        await send_reply(send, 200, body, content_type, extra)


class EnsembleApp(FastAPI):
    """FastAPI with the inference POSTs short-circuited to ``fast_app`` (see the module docstring).

    ``create_app`` sets ``fast_app`` (the :class:`InferEndpoint` inside the drain middleware); it stays
    None when CORS is configured, since the CORS middleware must see those requests."""

    fast_app: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and self.fast_app is not None
            and not scope.get("root_path")
            and (target := match(scope["path"])) is not None
        ):
            scope[TARGET] = target
            await self.fast_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
