"""THE request body reader: 413 for a body over the limit, 408 for one still incomplete at the timeout.

A body larger than ``max_body_bytes`` is refused by its Content-Length before a byte is read, or as soon
as it streams past the limit; a client that trickles its body must not hold a request (and, on SIGTERM,
the drain) for ever. Both close the connection (``server.errors``).
"""

from __future__ import annotations

import asyncio

from server import timers
from server.errors import BadRequest, ClientDisconnected, PayloadTooLarge, RequestTimeout
from server.http.errors import Receive


async def read_body(receive: Receive, declared: str | None, limit: int, timeout_s: float | None) -> bytes:
    """The body from ASGI messages; `declared` is the Content-Length header, if any.

    The timeout is a bare deadline (``server.timers``) that cancels this task, not ``asyncio.timeout`` or a
    loop timer, which cost more per request (docs/performance.md) while almost every body is already complete
    when the request starts."""
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
    timer = timers.call_later(timeout_s, expire)
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
        raise ClientDisconnected()
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
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            if size > limit:
                raise PayloadTooLarge(f"The request body is over {limit} bytes.")
            return b"".join(chunks)
