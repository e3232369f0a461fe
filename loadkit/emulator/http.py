"""A small HTTP/1.1 server protocol (httptools parser) tuned for many long SSE streams.

Frameworks were measured against it for this job (see bench/README.md): per streamed event
this costs one prebuilt ``transport.write``, nothing more.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import httptools

MAX_BODY_BYTES = 32 * 1024 * 1024

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Request Entity Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    529: b"Overloaded",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received: float  # time.perf_counter() when the request was complete
    too_large: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Handler(Protocol):
    def __call__(self, conn: Connection, request: Request) -> None: ...


def _header_block(status: int, headers: list[tuple[str, str]], framing: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    lines.append(framing)
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


END_OF_CHUNKS = b"0\r\n\r\n"


class Connection(asyncio.Protocol):
    """One client connection; requests are handled one at a time (no pipelining)."""

    opened = 0  # connections accepted by this process (ground truth for connection reuse)

    def __init__(self, handler: Handler) -> None:
        Connection.opened += 1
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.keep_alive = True
        self.on_lost: Callable[[], None] | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close()
        except httptools.HttpParserError:
            self.respond(400, [("content-type", "text/plain")], b"malformed HTTP request")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size <= MAX_BODY_BYTES:
            self._body.append(body)

    def on_message_complete(self) -> None:
        received = time.perf_counter()
        url = httptools.parse_url(self._url)
        self.keep_alive = self.parser.should_keep_alive()
        request = Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            received=received,
            too_large=self._body_size > MAX_BODY_BYTES,
        )
        self.handler(self, request)

    # responses
    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.closed or self.transport is None:
            return
        connection = "keep-alive" if self.keep_alive else "close"
        framing = f"content-length: {len(body)}\r\nconnection: {connection}\r\n\r\n".encode()
        self.transport.write(_header_block(status, headers, framing) + body)
        if not self.keep_alive:
            self.close()

    def stream_head(self, headers: list[tuple[str, str]]) -> bytes:
        """The bytes that open a chunked 200 response; send them with the first chunk."""
        return _header_block(
            200, headers, b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
        )

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def finish_stream(self, data: bytes) -> None:
        self.write(data + END_OF_CHUNKS)
        if not self.keep_alive:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def cut(self) -> None:
        """Drop the connection mid-response (FIN, no terminating chunk), as a failing proxy
        or server does; clients see an incomplete body."""
        if self.transport is not None and not self.closed:
            self.transport.close()
