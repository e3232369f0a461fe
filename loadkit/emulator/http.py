"""A small HTTP/1.1 server protocol (httptools parser) tuned for many long SSE streams.

Frameworks were measured against it for this job (see bench/README.md): per streamed event
this costs one prebuilt ``transport.write``, nothing more.

Requests on one connection are answered in order, one at a time. A request that arrives
while another is being answered (HTTP/1.1 pipelining) waits for its turn, and reading from
the socket pauses while one waits, so a client cannot pile up work or interleave answers.

Limits (``HttpSettings``, set from the ``http`` section of the emulator's config): the size of
the request line and headers (431), of the body (413 ``request_too_large``), the time to
send a request's headers and the time a body may stall (408), and the time a connection
may sit idle between requests (closed). A request refused by one of them, or malformed
(400), is answered in the API's error shape in its turn, counted like any other, and the
connection is then closed, gracefully: the server stops writing, drains what the client is
still sending for up to ``LINGER_S``, then closes (so the client reads the answer instead
of a reset).

``HttpCounters`` counts every request (any path) by how its answer ended: received ==
in_progress + sum(responses by status) + closed (the connection ended before the answer did).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

log = logging.getLogger("loadkit.emulator")

# The Messages API's request size limit, 32 MB ("Request size limits" in the API overview,
# read at https://docs.claude.com/ja/api/overview on 2026-11-30): beyond it the API answers
# 413 request_too_large.
MAX_BODY_BYTES = 32 * 1024 * 1024
LINGER_S = 2.0  # how long a refused client may go on sending before the socket closes

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    529: b"Overloaded",
}


@dataclass(slots=True)
class HttpSettings:
    """Limits shared by every connection; changed in place when the config changes."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = MAX_BODY_BYTES
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0


class HttpCounters:
    """Every HTTP request, on any path, by how its answer ended."""

    __slots__ = ("by_status", "closed", "in_progress", "received")

    def __init__(self) -> None:
        self.received = 0
        self.in_progress = 0
        self.closed = 0
        self.by_status: dict[int, int] = {}

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "in_progress": self.in_progress,
            "responses": {str(k): v for k, v in sorted(self.by_status.items())},
            "closed": self.closed,
        }

    def reset(self) -> None:
        self.received = self.in_progress
        self.closed = 0
        self.by_status = {}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received: float  # time.perf_counter() when the request was complete (or refused)
    keep_alive: bool = True
    # Set when the request was refused while being read: (status, error type, message).
    error: tuple[int, str, str] | None = None


class Handler(Protocol):
    def __call__(self, conn: Connection, request: Request) -> None: ...


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that breaks a limit."""


def _header_block(status: int, headers: list[tuple[str, str]], framing: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    lines.append(framing)
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


END_OF_CHUNKS = b"0\r\n\r\n"

# What the connection is waiting for when no answer is in progress (its timer's kind).
_IDLE, _HEAD, _BODY = 1, 2, 3


class Connection(asyncio.Protocol):
    """One client connection; requests are answered one at a time, in order."""

    opened = 0  # connections accepted by this process (ground truth for connection reuse)

    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_close_when_done",
        "_dispatching",
        "_head_bytes",
        "_head_done",
        "_head_method",
        "_head_size",
        "_headers",
        "_in_message",
        "_last_read",
        "_lingering",
        "_pending",
        "_reading_paused",
        "_stopped",
        "_timer",
        "_timer_at",
        "_url",
        "_wait_kind",
        "_wait_since",
        "closed",
        "counters",
        "handler",
        "keep_alive",
        "loop",
        "on_drain",
        "on_lost",
        "parser",
        "settings",
        "transport",
        "write_paused",
    )

    def __init__(
        self,
        handler: Handler,
        settings: HttpSettings | None = None,
        counters: HttpCounters | None = None,
        counted: bool = True,
    ) -> None:
        if counted:  # a sibling process's connection (--processes) is not a client's
            Connection.opened += 1
        self.handler = handler
        self.settings = settings or HttpSettings()
        self.counters = counters or HttpCounters()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.keep_alive = True  # of the request being answered
        self._head_method = False  # the request being answered is a HEAD: no body is sent
        self.on_lost: Callable[[], None] | None = None  # the answer in progress is abandoned
        self.on_drain: Callable[[], None] | None = None  # the write buffer has room again
        self.write_paused = False
        self._busy = False  # an answer is in progress
        self._dispatching = False
        self._pending: deque[Request] = deque()
        self._reading_paused = False
        self._stopped = False  # no more requests are parsed on this connection
        self._close_when_done = False
        self._lingering = False
        # One timer per connection, re-armed only when it fires early (see _wait).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._wait_kind = 0  # what the connection waits for (0: an answer is in progress)
        self._wait_since = 0.0
        self._last_read = 0.0
        # the request being parsed
        self._in_message = False
        self._head_done = False
        self._head_bytes = 0  # bytes received while reading a head (bounds a head in transit)
        self._head_size = 0  # size of the head parsed so far (bounds a head read at once)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wait(_IDLE)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # refused, upgraded or closing: what follows is dropped
        if not self._head_done:
            self._head_bytes += len(data)
        self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades (and CONNECT) are not supported: the request was answered
            # (or will be, in its turn) as a plain one; nothing after it is read.
            self._stopped = True
            self._close_when_done = True
        except httptools.HttpParserError as err:
            if self._stopped:
                return  # a callback refused the request (_Refused) and queued the answer
            cause = err.__context__
            if cause is not None and not isinstance(cause, _Refused):
                log.error("emulator bug while reading a request", exc_info=cause)
            self._refuse(400, "invalid_request_error", f"Malformed HTTP request: {err}")
            return
        if not self._head_done and self._head_bytes > self.settings.max_header_bytes:
            self._refuse(431, "invalid_request_error", self._head_too_large())
            return
        if not self._busy and not self.closed:
            if self._close_when_done and not self._pending:
                self._close_after_answer()
            elif self._in_message:
                self._wait(_BODY if self._head_done else _HEAD)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stopped = True
        self._cancel_timer()
        if self._busy:
            self._busy = False
            counters = self.counters
            counters.in_progress -= 1
            counters.closed += 1
        callback, self.on_lost = self.on_lost, None
        self.on_drain = None
        if callback is not None:
            callback()
        # Requests that were waiting their turn: received, never answered. The handler is
        # told (it sees ``closed``) so that they are counted.
        pending, self._pending = self._pending, deque()
        counters = self.counters
        for request in pending:
            counters.received += 1
            counters.closed += 1
            self.handler(self, request)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        callback, self.on_drain = self.on_drain, None
        if callback is not None:
            callback()

    # httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_message = True
        self._head_done = False
        self._head_size = 0
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._head_bytes = 0
        if self._head_size > self.settings.max_header_bytes:
            self._refuse_in_callback(431, "invalid_request_error", self._head_too_large())
        length = self._headers.get("content-length", "").strip()
        limit = self.settings.max_body_bytes
        if length.isdigit() and (len(length) > 15 or int(length) > limit):
            self._refuse_in_callback(413, "request_too_large", _too_large(limit))
        if (
            not self._busy
            and self._headers.get("expect", "").lower() == "100-continue"
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.settings.max_body_bytes:
            self._refuse_in_callback(
                413, "request_too_large", _too_large(self.settings.max_body_bytes)
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._stopped:
            return  # after "connection: close" was answered, or the connection closed
        self._in_message = False
        self._head_done = False
        self._head_bytes = 0
        method, path, query = self._request_line()
        request = Request(
            method=method,
            path=path,
            query=query,
            headers=self._headers,
            body=b"".join(self._body),
            received=time.perf_counter(),
            keep_alive=self.parser.should_keep_alive(),
        )
        self._body = []
        if self._busy or self._pending:
            self._pending.append(request)
            if not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
        else:
            self._dispatch(request)

    # refusals -----------------------------------------------------------------------------
    def _head_too_large(self) -> str:
        return (
            "Request header fields too large: the request line and headers exceed "
            f"{self.settings.max_header_bytes} bytes"
        )

    def _request_line(self) -> tuple[str, str, str]:
        """Method, path and query of the request being parsed (what is known of them)."""
        if not self._url:
            return "", "", ""  # the method is not known either (the parser keeps the last)
        method = self.parser.get_method().decode("ascii", "replace")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            return method, "", ""
        return method, (url.path or b"").decode("latin-1"), (url.query or b"").decode("latin-1")

    def _refusal(self, status: int, error_type: str, message: str) -> Request:
        method, path, query = self._request_line() if self._in_message else ("", "", "")
        return Request(
            method=method,
            path=path,
            query=query,
            headers=self._headers if self._in_message else {},
            body=b"",
            received=time.perf_counter(),
            keep_alive=False,
            error=(status, error_type, message),
        )

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        """Stop reading; answer ``status`` in this request's turn, then close."""
        if self._stopped:
            return
        self._stopped = True
        request = self._refusal(status, error_type, message)
        self._in_message = False
        self._body = []
        if self._busy or self._pending:
            self._pending.append(request)
        else:
            self._dispatch(request)

    def _refuse_in_callback(self, status: int, error_type: str, message: str) -> None:
        self._refuse(status, error_type, message)
        raise _Refused  # stops the parser; feed_data raises, data_received ignores it

    # turns --------------------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        self._wait_kind = 0  # no timeout while answering (a pending timer finds nothing to do)
        self.keep_alive = request.keep_alive
        self._head_method = request.method == "HEAD"
        self.on_lost = None
        self._busy = True
        counters = self.counters
        counters.received += 1
        counters.in_progress += 1
        self._dispatching = True
        try:
            self.handler(self, request)
        finally:
            self._dispatching = False

    def _dispatch(self, request: Request) -> None:
        self._start(request)
        if not self._busy:
            self._next()

    def _done(self, status: int) -> bool:
        """The answer in progress is complete; False if there was none."""
        if not self._busy:
            return False
        self._busy = False
        self.on_lost = None
        self.on_drain = None
        counters = self.counters
        counters.in_progress -= 1
        counters.by_status[status] = counters.by_status.get(status, 0) + 1
        return True

    def _next(self) -> None:
        """After an answer: close, answer the next waiting request, or wait for one."""
        while not self.closed:
            if not self.keep_alive:
                # "connection: close" (or a refusal): requests sent after it are not read.
                self._pending.clear()
                self._close_after_answer()
                return
            if not self._pending:
                break
            self._start(self._pending.popleft())
            if self._busy:
                return
        if self.closed:
            return
        if self._close_when_done:
            self._close_after_answer()
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._in_message:
            self._wait(_BODY if self._head_done else _HEAD)
        else:
            self._wait(_IDLE)

    def _answered(self, status: int) -> None:
        if self._done(status) and not self._dispatching:
            if self._pending:
                # The next request starts once whoever answered this one has finished its
                # own bookkeeping (a stream's end is counted before the next one begins).
                self.loop.call_soon(self._next)
            else:
                self._next()

    def _close_after_answer(self) -> None:
        if self._lingering or self.closed or self.transport is None:
            return
        self._stopped = True
        if self.transport.can_write_eof():
            # The client may still be sending (a body, a header, pipelined requests): a plain
            # close would then reset the connection and could destroy the answer in transit.
            # Stop writing, drop what comes, close on the client's EOF or after LINGER_S.
            self._lingering = True
            self._cancel_timer()
            self._pending.clear()
            self.transport.write_eof()
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            self._timer = self.loop.call_later(LINGER_S, self.close)
            self._timer_at = self.loop.time() + LINGER_S
            return
        self.close()

    # timers -------------------------------------------------------------------------------
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wait_kind = 0

    def _wait(self, kind: int) -> None:
        """From now the connection waits for ``kind`` (no answer is in progress).

        The timer is only moved when the new deadline is earlier than the one it is set for
        (a partial head after an idle wait); otherwise it fires at the old time and re-arms
        itself for what is then due. A keep-alive request costs no timer operation.
        """
        if kind == self._wait_kind or self._stopped or self.closed:
            return
        self._wait_kind = kind
        now = self.loop.time()
        self._wait_since = now
        settings = self.settings
        deadline = now + (settings.header_timeout_s if kind == _HEAD else settings.idle_timeout_s)
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        kind = self._wait_kind
        if kind == 0 or self._busy or self.closed or self._stopped:
            return
        settings = self.settings
        if kind == _BODY:
            deadline = self._last_read + settings.idle_timeout_s
        elif kind == _HEAD:
            deadline = self._wait_since + settings.header_timeout_s
        else:
            deadline = self._wait_since + settings.idle_timeout_s
        if self.loop.time() < deadline:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._timed_out)
        elif kind == _IDLE:
            self.close()  # an idle keep-alive connection is closed without a word
        elif kind == _HEAD:
            self._refuse(
                408,
                "invalid_request_error",
                "Request timeout: the request line and headers were not received within "
                f"{settings.header_timeout_s:g} s",
            )
        else:
            self._refuse(
                408,
                "invalid_request_error",
                f"Request timeout: the request body stalled for {settings.idle_timeout_s:g} s",
            )

    # responses ----------------------------------------------------------------------------
    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if not self._busy or self.closed or self.transport is None:
            return  # no answer due (or the connection is gone: counted as closed)
        connection = "keep-alive" if self.keep_alive else "close"
        framing = f"content-length: {len(body)}\r\nconnection: {connection}\r\n\r\n".encode()
        head = _header_block(status, headers, framing)
        self.transport.write(head if self._head_method else head + body)
        self._answered(status)

    def stream_head(self, headers: list[tuple[str, str]]) -> bytes:
        """The bytes that open a chunked 200 response; send them with the first chunk."""
        connection = b"keep-alive" if self.keep_alive else b"close"
        return _header_block(
            200, headers, b"transfer-encoding: chunked\r\nconnection: %s\r\n\r\n" % connection
        )

    def write(self, data: bytes) -> None:
        if self._busy and not self.closed and self.transport is not None:
            self.transport.write(data)

    def finish_stream(self, data: bytes) -> None:
        if not self._busy or self.closed or self.transport is None:
            return
        self.transport.write(data + END_OF_CHUNKS)
        self._answered(200)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._stopped = True
            self._cancel_timer()
            self.transport.close()

    def cut(self) -> None:
        """Drop the connection mid-response (FIN, no terminating chunk), as a failing proxy
        or server does; clients see an incomplete body."""
        self.close()


def _too_large(limit: int) -> str:
    return f"Request exceeds the maximum allowed number of bytes ({limit})"
