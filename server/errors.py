"""One exception hierarchy, transport-free: each error carries its HTTP status (gRPC maps it to its code).

Each transport renders them in one place: HTTP as ``{"error": "..."}`` with the status and headers
(``server.http.errors``).
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the server answers on purpose."""

    status_code = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServerError):
    status_code = 400


class Unauthorized(ServerError):
    status_code = 401

    def __init__(
        self, message: str = "This endpoint needs an 'Authorization: Bearer <token>' header."
    ) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class Forbidden(ServerError):
    status_code = 403


class NotFound(ServerError):
    status_code = 404


class RequestTimeout(ServerError):
    status_code = 408

    def __init__(self, message: str) -> None:
        # The rest of the body may never come: stop waiting for it.
        super().__init__(message, {"Connection": "close"})


class PayloadTooLarge(ServerError):
    status_code = 413

    def __init__(self, message: str) -> None:
        # Close rather than read (and discard) the rest of a huge body.
        super().__init__(message, {"Connection": "close"})


class QueueFull(ServerError):
    status_code = 429

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class Unavailable(ServerError):
    status_code = 503

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)} if retry_after_s else None)


class Timeout(ServerError):
    status_code = 504


class ClientDisconnected(ServerError):
    """The client left before its request was read whole: nobody to answer. Counted as outcome 499
    (nginx's name for it), never rendered."""

    status_code = 499

    def __init__(self, message: str = "The client closed the connection.") -> None:
        super().__init__(message)


class ModelLoadError(Exception):
    """A model version could not be loaded (bad manifest, missing file, checksum, shapes, runtime)."""
