"""A lean HTTP/1.1 transport for httpx: keep-alive sockets, a C parser, arrival timestamps.

The SDK sends every request through its httpx client; this transport is what that client
writes to. It exists because the default stack (httpcore + h11) costs tens of microseconds of
Python per SSE event, which a load generator pays for every token it measures. Here a read
is one ``recvmsg`` and one ``httptools`` (llhttp) ``feed_data``, and the body arrives as the
bytes of that read.

Each read also carries the time its bytes reached this host: on Linux the kernel stamps
every received segment (``SO_TIMESTAMPNS``), and that stamp is moved onto the
``perf_counter_ns`` clock. A busy load generator then reads late without measuring late,
unless it reads so late that one read takes several segments: a read has one stamp, the
latest segment's (Linux's TCP), so the earlier bytes of that read are dated late.
TLS runs in memory (``ssl.SSLObject``) so that the encrypted bytes are read, and stamped,
by the same call. No read is stamped earlier than the previous one, nor earlier than the
start of the request's write, which is traced (``http11.send_request_body.started``) just
before it happens, so that a client can take its send time there.

Read and write timeouts are enforced by one watchdog thread per transport, which shuts down
a socket that made no progress in time: a per-read timer would cost more than the read.

It speaks plain HTTP/1.1 over TCP or TLS, directly (no proxies, no HTTP/2). The standard
library's sockets are used, so under gevent's monkey-patching they are cooperative.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httptools
import httpx2

RECV_BYTES = 65536
DEFAULT_PORTS = {b"http": 80, b"https": 443}
WATCHDOG_INTERVAL_S = 0.25
# SO_TIMESTAMPNS (asm-generic value; Python does not export it): a struct timespec per read
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
ANCILLARY_BYTES = socket.CMSG_SPACE(TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
KERNEL_STAMPS = sys.platform == "linux" and ANCILLARY_BYTES > 0
MAX_STAMP_AGE_NS = 10_000_000_000  # older than this, the stamp is not trusted

_perf_ns = time.perf_counter_ns
_wall_ns = time.time_ns
# Two clock reads further apart than this were split by a pause (another thread took the GIL
# between them: the records and InfluxDB writers hold it for milliseconds): read again.
CLOCK_PAIR_NS = 20_000
CLOCK_PAIR_TRIES = 3


def _clocks() -> tuple[int, int]:
    """``(perf_counter_ns, time_ns)`` of one instant, as closely as they can be read."""
    for _ in range(CLOCK_PAIR_TRIES):
        before = _perf_ns()
        wall = _wall_ns()
        now = _perf_ns()
        if now - before <= CLOCK_PAIR_NS:
            break
    return now, wall + (now - before) // 2


def _arrival(ancillary: list[tuple[int, int, bytes]], now: int, wall: int) -> int:
    """The kernel's receive stamp as a perf_counter_ns time (``now`` when there is none).

    ``wall`` is the wall clock at ``now`` (``_clocks``): were the two reads split by a pause,
    the result could only be later than the true arrival, never earlier.
    """
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanos = TIMESPEC.unpack_from(data)
            age = wall - (seconds * 1_000_000_000 + nanos)
            if 0 <= age < MAX_STAMP_AGE_NS:
                return int(now - age)
    return now


class ConnectionTimedOut(Exception):
    """Raised by a connection the watchdog shut down."""


class _Connection:
    """One socket (plain or TLS in memory), with the time of its last progress."""

    __slots__ = (
        "idle_since",
        "incoming",
        "origin",
        "outgoing",
        "progress_ns",
        "sock",
        "stamps",
        "t_read",
        "timed_out",
        "timeout_ns",
        "tls",
    )

    def __init__(self, sock: socket.socket, origin: tuple[bytes, bytes, int]) -> None:
        self.sock = sock
        self.origin = origin
        self.idle_since = 0.0
        self.tls: ssl.SSLObject | None = None
        self.incoming = self.outgoing = ssl.MemoryBIO()
        self.stamps = False
        if KERNEL_STAMPS:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.stamps = True
        # when the bytes of the last read arrived (perf_counter_ns); never earlier than the
        # previous read's, nor than the start of the request's write
        self.t_read = 0
        self.progress_ns = 0  # when the last read returned, or the last wait began
        self.timeout_ns = 0  # how long a wait may last before the watchdog ends it; 0: ever
        self.timed_out = False

    def start_tls(self, context: ssl.SSLContext, hostname: str) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ssl.SSLEOFError(
                        "the server closed the connection during the handshake"
                    ) from None
        self._flush()

    def arm(self, timeout_s: float | None) -> None:
        """From now on, each wait for the socket may last ``timeout_s`` (None: no limit)."""
        self.timeout_ns = int(timeout_s * 1e9) if timeout_s else 0
        self.progress_ns = _perf_ns()

    def sendall(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
        else:
            self.tls.write(data)
            self._flush()

    def recv(self) -> bytes:
        """The next bytes (b"" at the end); ``t_read`` is when they reached this host."""
        tls = self.tls
        if tls is None:
            return self._recv_wire()
        while True:
            try:
                data = tls.read(RECV_BYTES)
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return b""
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            if self.outgoing.pending:
                self._flush()
            return data

    def _recv_wire(self) -> bytes:
        if self.stamps:
            data, ancillary, _, _ = self.sock.recvmsg(RECV_BYTES, ANCILLARY_BYTES)
            now, wall = _clocks()
            self.progress_ns = now
            arrival = _arrival(ancillary, now, wall)
            # Bytes cannot arrive before earlier ones, nor before the request was sent: a
            # step of the wall clock (the kernel's stamps are wall-clock times) could say so.
            if arrival > self.t_read:
                self.t_read = arrival
        else:
            data = self.sock.recv(RECV_BYTES)
            self.progress_ns = self.t_read = _perf_ns()
        if self.timed_out:
            raise ConnectionTimedOut
        return data

    def _fill(self) -> bool:
        data = self._recv_wire()
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)
            if self.timed_out:
                raise ConnectionTimedOut

    def readable(self) -> bool:
        """True when an idle connection has something to read: a close, or stray bytes."""
        if self.tls is not None and (self.incoming.pending or self.tls.pending()):
            return True
        sock = self.sock
        try:
            sock.settimeout(0.0)  # a peek that never waits (gevent's select costs ~10x more)
            sock.recv(1, socket.MSG_PEEK)  # bytes, or b"" for a close: either way, not reusable
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(None)

    def expire(self) -> None:
        """Called by the watchdog: wake whoever waits on this socket, with an error."""
        self.timed_out = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Exchange:
    """The parser callbacks for one response."""

    __slots__ = ("body", "complete", "headers", "headers_done", "keep_alive", "parser", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.status = 0
        self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # asked here: once the message is complete the parser no longer knows
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def release(self) -> None:
        """Break the cycle exchange -> parser -> bound callbacks -> exchange.

        Left to the cyclic collector, a thousand of these a second made it pause for tens of
        milliseconds; dropped here, reference counting frees them at once.
        """
        self.parser = None  # type: ignore[assignment]


class ResponseBody(httpx2.SyncByteStream):
    """The body of one response, read from its connection as it arrives.

    ``timed_reads()`` gives ``(arrival time, bytes)`` per read, de-chunked; iterating gives
    the bytes alone (as httpx does). The connection goes back to the pool only when the
    whole body was read; a body closed early closes its socket.
    """

    def __init__(
        self,
        transport: LeanTransport,
        connection: _Connection,
        exchange: _Exchange,
        request: httpx2.Request,
        close_delimited: bool,
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._exchange = exchange
        self._request = request
        self._close_delimited = close_delimited
        self.t_headers = connection.t_read

    def __iter__(self) -> Iterator[bytes]:
        for _, chunk in self.timed_reads():
            yield chunk

    def timed_reads(self) -> Iterator[tuple[int, bytes]]:
        exchange = self._exchange
        body = exchange.body
        connection = self._connection
        if connection is None:
            return
        if body:
            chunk = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            yield connection.t_read, chunk
        request = self._request
        while not exchange.complete:
            if not _pull(connection, exchange.parser, request):
                if self._close_delimited:
                    exchange.complete = True
                    exchange.keep_alive = False
                    break
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body",
                    request=request,
                )
            if body:
                chunk = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                yield connection.t_read, chunk

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        exchange = self._exchange
        exchange.release()
        if exchange.complete and exchange.keep_alive:
            self._transport._release(connection)
        else:
            self._transport._discard(connection)


def _pull(
    connection: _Connection, parser: httptools.HttpResponseParser, request: httpx2.Request
) -> bool:
    """Read once and feed the parser; False when the server closed the connection."""
    try:
        data = connection.recv()
    except ConnectionTimedOut as err:
        raise httpx2.ReadTimeout("no data within the read timeout", request=request) from err
    except ssl.SSLError as err:
        raise httpx2.ReadError(f"TLS: {err}", request=request) from err
    except OSError as err:
        if connection.timed_out:
            raise httpx2.ReadTimeout("no data within the read timeout", request=request) from err
        raise httpx2.ReadError(str(err), request=request) from err
    if not data:
        return False
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as err:
        raise httpx2.RemoteProtocolError(str(err), request=request) from err
    return True


class LeanTransport(httpx2.BaseTransport):
    """``httpx2.Client(transport=LeanTransport())``.

    ``max_connections`` bounds the sockets open at once (None: no bound; a request waits
    up to its pool timeout for one). Idle sockets are kept for ``keepalive_expiry`` seconds
    and checked for a close by the server before they are used again. Read and write
    timeouts are kept to within ``WATCHDOG_INTERVAL_S``.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._ssl_context = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None
        self._keepalive_expiry = keepalive_expiry
        self._closed = False
        self._watchdog: threading.Thread | None = None
        self.connections_opened = 0

    # the pool -------------------------------------------------------------------------------
    def _acquire(self, request: httpx2.Request, timeouts: dict[str, Any]) -> _Connection:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx2.UnsupportedProtocol(
                f"the lean transport speaks http and https, not {scheme.decode()!r}",
                request=request,
            )
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="loadkit-transport-watchdog", daemon=True
            )
            self._watchdog.start()
        origin = (scheme, url.raw_host, url.port or DEFAULT_PORTS[scheme])
        if self._slots is not None and not self._slots.acquire(timeout=timeouts.get("pool")):
            raise httpx2.PoolTimeout("no connection became free in time", request=request)
        try:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                fresh = now - connection.idle_since < self._keepalive_expiry
                if fresh and not connection.readable():
                    self._busy.add(connection)
                    return connection
                connection.close()  # expired, or the server closed it (or sent junk)
            connection = self._connect(request, origin, timeouts)
            self._busy.add(connection)
            return connection
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def _connect(
        self, request: httpx2.Request, origin: tuple[bytes, bytes, int], timeouts: dict[str, Any]
    ) -> _Connection:
        scheme, host, port = origin
        hostname = host.decode("ascii")
        connect_timeout = timeouts.get("connect")
        try:
            sock = socket.create_connection((hostname, port), timeout=connect_timeout)
        except TimeoutError as err:
            raise httpx2.ConnectTimeout(str(err) or "connect timed out", request=request) from err
        except OSError as err:
            raise httpx2.ConnectError(str(err), request=request) from err
        sock.settimeout(None)  # the watchdog keeps the time from here on
        connection = _Connection(sock, origin)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                connection.arm(connect_timeout)
                self._busy.add(connection)
                connection.start_tls(self._ssl_context or httpx2.create_ssl_context(), hostname)
        except ConnectionTimedOut as err:
            connection.close()
            raise httpx2.ConnectTimeout("TLS handshake timed out", request=request) from err
        except OSError as err:  # ssl.SSLError included
            connection.close()
            raise httpx2.ConnectError(str(err), request=request) from err
        finally:
            self._busy.discard(connection)
        self.connections_opened += 1
        return connection

    def _release(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        if self._closed:
            connection.close()
        else:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        if self._slots is not None:
            self._slots.release()

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.close()
        if self._slots is not None:
            self._slots.release()

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(WATCHDOG_INTERVAL_S)
            now = _perf_ns()
            for connection in list(self._busy):
                limit = connection.timeout_ns
                if limit and now - connection.progress_ns > limit:
                    connection.expire()

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # one exchange ---------------------------------------------------------------------------
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        content = request.read()
        head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        head.append(content)
        payload = b"".join(head)

        connection = self._acquire(request, timeouts)
        try:
            return self._exchange(request, connection, payload, timeouts)
        except BaseException:
            self._discard(connection)
            raise

    def _exchange(
        self,
        request: httpx2.Request,
        connection: _Connection,
        payload: bytes,
        timeouts: dict[str, Any],
    ) -> httpx2.Response:
        trace = request.extensions.get("trace")
        if trace is not None:
            # Right before the write (of head and body at once), as httpcore traces before
            # its body write: a clock read here is never later than the send, where one
            # read after the write could be, by any pause in between.
            info = {"request": request}
            trace("http11.send_request_body.started", info)
        connection.arm(timeouts.get("write"))
        connection.t_read = connection.progress_ns  # no byte of the answer arrives before
        try:
            connection.sendall(payload)
        except (ConnectionTimedOut, OSError) as err:
            if connection.timed_out:
                raise httpx2.WriteTimeout("write timed out", request=request) from err
            raise httpx2.WriteError(str(err), request=request) from err
        if trace is not None:
            trace("http11.send_request_body.complete", info)

        connection.arm(timeouts.get("read"))
        exchange = _Exchange()
        try:
            while not exchange.headers_done:
                if not _pull(connection, exchange.parser, request):
                    raise httpx2.RemoteProtocolError(
                        "server disconnected without sending a response", request=request
                    )
        except BaseException:
            exchange.release()
            raise
        status = exchange.status
        if request.method == "HEAD" or status in (204, 304):
            exchange.complete = True
        names = {name.lower() for name, _ in exchange.headers}
        close_delimited = b"content-length" not in names and b"transfer-encoding" not in names
        body = ResponseBody(self, connection, exchange, request, close_delimited)
        return httpx2.Response(
            status,
            headers=exchange.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "loadkit_body": body},
        )
