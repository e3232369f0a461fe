"""A lean HTTP/1.1 transport for httpx: keep-alive sockets and a C response parser.

The SDK sends every request through its httpx client; this transport is what that client
writes to. It exists because the default stack (httpcore + h11) costs tens of microseconds of
Python per SSE event, which a load generator pays for every token it measures. Here a read
is one ``recv`` and one ``httptools`` (llhttp) ``feed_data``, and the body arrives as the
bytes of that read.

It speaks plain HTTP/1.1 over TCP or TLS, directly (no proxies, no HTTP/2). The standard
library's sockets are used, so under gevent's monkey-patching they are cooperative.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httptools
import httpx2

RECV_BYTES = 65536
DEFAULT_PORTS = {b"http": 80, b"https": 443}


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


class _Connection:
    __slots__ = ("idle_since", "origin", "sock")

    def __init__(self, sock: socket.socket, origin: tuple[bytes, bytes, int]) -> None:
        self.sock = sock
        self.origin = origin
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ResponseBody(httpx2.SyncByteStream):
    """The body of one response, read from its connection as it arrives.

    Each item is everything one ``recv`` brought, de-chunked. The connection goes back to
    the pool only when the whole body was read; a body closed early closes its socket.
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

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        body = exchange.body
        if body:
            chunk = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            yield chunk
        connection = self._connection
        if connection is None:
            return
        recv = connection.sock.recv
        feed = exchange.parser.feed_data
        request = self._request
        while not exchange.complete:
            try:
                data = recv(RECV_BYTES)
            except TimeoutError as err:
                raise httpx2.ReadTimeout(str(err) or "read timed out", request=request) from err
            except OSError as err:
                raise httpx2.ReadError(str(err), request=request) from err
            if not data:
                if self._close_delimited:
                    exchange.complete = True
                    exchange.keep_alive = False
                    break
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body",
                    request=request,
                )
            try:
                feed(data)
            except httptools.HttpParserError as err:
                raise httpx2.RemoteProtocolError(str(err), request=request) from err
            if body:
                chunk = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                yield chunk

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        exchange = self._exchange
        if exchange.complete and exchange.keep_alive:
            self._transport._release(connection)
        else:
            self._transport._discard(connection)


class LeanTransport(httpx2.BaseTransport):
    """``httpx2.Client(transport=LeanTransport())``.

    ``max_connections`` bounds the sockets open at once (None: no bound; a request waits
    up to its pool timeout for one). Idle sockets are kept for ``keepalive_expiry`` seconds
    and checked for a close by the server before they are used again.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._ssl_context = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None
        self._keepalive_expiry = keepalive_expiry
        self._closed = False
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
        origin = (scheme, url.raw_host, url.port or DEFAULT_PORTS[scheme])
        if self._slots is not None and not self._slots.acquire(timeout=timeouts.get("pool")):
            raise httpx2.PoolTimeout("no connection became free in time", request=request)
        try:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if now - connection.idle_since < self._keepalive_expiry and not _readable(
                    connection.sock
                ):
                    connection.sock.settimeout(timeouts.get("read"))
                    return connection
                connection.close()  # expired, or the server closed it (or sent junk)
            return self._connect(request, origin, timeouts)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def _connect(
        self, request: httpx2.Request, origin: tuple[bytes, bytes, int], timeouts: dict[str, Any]
    ) -> _Connection:
        scheme, host, port = origin
        hostname = host.decode("ascii")
        try:
            sock = socket.create_connection((hostname, port), timeout=timeouts.get("connect"))
        except TimeoutError as err:
            raise httpx2.ConnectTimeout(str(err) or "connect timed out", request=request) from err
        except OSError as err:
            raise httpx2.ConnectError(str(err), request=request) from err
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                context = self._ssl_context or httpx2.create_ssl_context()
                sock = context.wrap_socket(sock, server_hostname=hostname)
        except TimeoutError as err:
            sock.close()
            raise httpx2.ConnectTimeout(
                str(err) or "TLS handshake timed out", request=request
            ) from err
        except OSError as err:
            sock.close()
            raise httpx2.ConnectError(str(err), request=request) from err
        sock.settimeout(timeouts.get("read"))
        self.connections_opened += 1
        return _Connection(sock, origin)

    def _release(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
        else:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        if self._slots is not None:
            self._slots.release()

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        if self._slots is not None:
            self._slots.release()

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
        sock = connection.sock
        trace = request.extensions.get("trace")
        try:
            if timeouts.get("write") != timeouts.get("read"):
                sock.settimeout(timeouts.get("write"))
                sock.sendall(payload)
                sock.settimeout(timeouts.get("read"))
            else:
                sock.sendall(payload)
        except TimeoutError as err:
            raise httpx2.WriteTimeout(str(err) or "write timed out", request=request) from err
        except OSError as err:
            raise httpx2.WriteError(str(err), request=request) from err
        if trace is not None:
            trace("http11.send_request_body.complete", {"request": request})

        exchange = _Exchange()
        parser = exchange.parser
        while not exchange.headers_done:
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError as err:
                raise httpx2.ReadTimeout(str(err) or "read timed out", request=request) from err
            except OSError as err:
                raise httpx2.ReadError(str(err), request=request) from err
            if not data:
                raise httpx2.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                )
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as err:
                raise httpx2.RemoteProtocolError(str(err), request=request) from err
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


def _readable(sock: socket.socket) -> bool:
    """True when an idle connection has something to read: a close (EOF) or stray bytes."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
