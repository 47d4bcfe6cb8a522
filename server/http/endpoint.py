"""The fast ASGI path: the route table's routes answered straight from ASGI, in front of FastAPI.

Under load the FastAPI/Starlette stack (middlewares, routing, dependency solving, Request and Response
objects) cost several times the inference itself per request (profiled in docs/performance.md). So
:class:`Endpoint` matches every route of the table (``server.http.app.ROUTES``) itself, the way Starlette
would (``{name}`` is ``[^/]+``), hands the handler a :class:`Call` and writes its :data:`Reply`, or the
error, with the one renderer (``server.http.errors``). A path no route has goes to FastAPI (``/docs``,
``/openapi.json``, the docs assets, and its 404 for the rest); a known path with another method is 405,
and one with a trailing slash is redirected (307) without it, as Starlette does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from server.errors import ClientDisconnected, ServerError
from server.http.body import read_body
from server.http.errors import INTERNAL, Receive, Scope, Send, send_error, send_reply, send_server_error

log = logging.getLogger("server")

# (status, body, content type, extra headers or None)
Reply = tuple[int, bytes, str, Mapping[str, str] | None]
_CONTENT_LENGTH = b"content-length"
_PARAM = re.compile(r"\{([a-z_]+)\}")
_SEEN_PATHS = 1024


class Call:
    """One HTTP request as a handler sees it: the path's parameters, its headers, its body on demand."""

    __slots__ = ("params", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.scope, self.receive, self.params = scope, receive, params

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value.decode("latin-1")
        return None

    async def body(self, limit: int, timeout_s: float | None) -> bytes:
        """The whole body (server.http.body: 413 over `limit`, 408 after `timeout_s`)."""
        return await read_body(self.receive, self.header(_CONTENT_LENGTH), limit, timeout_s)


Handler = Callable[[Any, Call], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One row of the route table: what the router matches and what the OpenAPI document describes."""

    method: Literal["GET", "POST"]
    path: str  # Starlette's syntax: "/v2/models/{name}/infer"
    handler: Handler  # handler(services, call)
    summary: str
    tag: str
    body: type | None = None  # pydantic model describing the request body (docs only)
    response: type | None = None  # pydantic model describing the 200 body (docs only)
    binary_body: bool = False  # also takes Triton's binary tensor bodies (docs only)
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    suffix: str = field(init=False, repr=False, compare=False)  # the literal end: a cheap test first

    def __post_init__(self) -> None:
        escaped = re.escape(self.path).replace(r"\{", "{").replace(r"\}", "}")
        object.__setattr__(self, "pattern", re.compile(_PARAM.sub(lambda m: f"(?P<{m[1]}>[^/]+)", escaped)))
        object.__setattr__(self, "suffix", self.path.rsplit("}", 1)[-1])


class Endpoint:
    """ASGI app for the routes of `routes`; anything else goes to `fallback` (FastAPI)."""

    def __init__(self, routes: tuple[Route, ...], services: Any, fallback: Any) -> None:
        self.routes, self.services, self.fallback = routes, services, fallback
        # Per method, in table order (the order decides between "/v2/models/stats" and "{name}").
        self._by_method = {m: [r for r in routes if r.method == m] for m in ("GET", "POST")}
        self._by_method["HEAD"] = self._by_method["GET"]
        # (method, path) -> match: clients repeat the same few paths, and a regex per request is measurable
        # on the hot path. Bounded: emptied when full (unknown paths are not kept at all).
        self._seen: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | list[str] | None:
        """The route and its parameters; else the methods the path allows (a 405), or None (unknown).
        Handlers must not change the parameters' dict (it is shared by the requests of one path)."""
        key = (method, path)
        found = self._seen.get(key)
        if found is not None:
            return found
        for route in self._by_method.get(method, ()):
            if path.endswith(route.suffix) and (m := route.pattern.fullmatch(path)) is not None:
                found = (route, m.groupdict())
                if len(path) <= 256:  # bounded memory: at most _SEEN_PATHS short paths
                    if len(self._seen) >= _SEEN_PATHS:
                        self._seen.clear()
                    self._seen[key] = found
                return found
        allowed = [route.method for route in self.routes if route.pattern.fullmatch(path)]
        return allowed or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        found = self.match(scope["method"], path)
        if found is None:
            if path != "/" and path.endswith("/") and self.match(scope["method"], path.rstrip("/")):
                await _redirect_without_slash(scope, receive, send)
                return
            await self.fallback(scope, receive, send)
            return
        if isinstance(found, list):
            allow = ", ".join(sorted({*found, *(["HEAD"] if "GET" in found else [])}))
            await send_error(send, 405, "Method not allowed.", {"Allow": allow})
            return
        route, params = found
        try:
            status, body, content_type, headers = await route.handler(
                self.services, Call(scope, receive, params)
            )
        except ClientDisconnected:
            return  # nobody to answer; the data plane has counted the request
        except ServerError as exc:
            await send_server_error(send, exc)
            return
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await send_error(send, 500, INTERNAL)
            return
        await send_reply(send, status, body, content_type, headers)


async def _redirect_without_slash(scope: Scope, receive: Receive, send: Send) -> None:
    """307 to the path without its trailing slash, as Starlette's router answers."""
    from starlette.datastructures import URL
    from starlette.responses import RedirectResponse

    target = URL(scope={**scope, "path": scope["path"].rstrip("/")})
    await RedirectResponse(url=str(target))(scope, receive, send)
