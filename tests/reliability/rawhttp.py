"""A minimal HTTP/1.1 client over a raw socket: the request goes out byte for byte (no path normalisation,
no added headers), so that tests can send what a hostile or broken client would."""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return RawResponse(status, headers, body)


def exchange(port: int, request: bytes, timeout_s: float = 10) -> RawResponse:
    """Send `request` and read until the server closes (the request should say Connection: close).

    It goes out in 64 KiB pieces and sending stops as soon as the server answers: a server that refuses a
    body early (413) closes the connection, and writing on would only earn a reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        data = b""
        for start in range(0, len(request), 65536):
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(request[start : start + 65536])
            except (BrokenPipeError, ConnectionResetError):
                break
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            if not data:
                raise
    return parse_response(data)


def request(
    port: int, method: str, path: bytes | str, body: bytes = b"", headers: dict[str, str] | None = None
) -> RawResponse:
    """One request on its own connection, with Content-Length set from `body` unless `headers` set it."""
    target = path.encode("latin-1") if isinstance(path, str) else path
    hdrs = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
        hdrs["Content-Length"] = str(len(body))
    head = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in hdrs.items())
    return exchange(port, method.encode() + b" " + target + b" HTTP/1.1\r\n" + head + b"\r\n" + body)
