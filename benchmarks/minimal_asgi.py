"""The HTTP limit: a raw ASGI callable that reads the body, parses its JSON with orjson and answers a
constant. No routing, no validation, no model: what any Python HTTP server on uvicorn can reach at best.

Run: ``python -m uvicorn benchmarks.minimal_asgi:app --loop uvloop --http httptools``.
A binary V2 body is parsed up to its ``Inference-Header-Content-Length`` (the JSON header), as a server must.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

RESPONSE = orjson.dumps({"ok": True})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]
HEADER_LENGTH = b"inference-header-content-length"

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    if body:
        length = next((int(v) for k, v in scope["headers"] if k == HEADER_LENGTH), None)
        orjson.loads(body if length is None else memoryview(body)[:length])
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": RESPONSE})
