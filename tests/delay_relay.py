"""A delaying TCP relay: link latency for the network-namespace tests, where the kernel has no
``netem`` qdisc.

Every byte read from one side is written to the other ``--delay-ms`` later (each direction:
a round trip through the relay costs twice that). Bytes are stamped as they are read and held
in order, so the delay does not cap throughput. Threads sleep with ``clock_nanosleep``
(microseconds), not an event loop's millisecond timer. A side that closes has its close
passed on after the bytes before it, as a network would deliver them.

With ``--count-path P``, client-to-server bytes are read as HTTP/1.1 requests and those whose
request line is ``POST P`` (no sub-path) are counted per client address, once their body has
passed: the ground truth of which host sent how many requests.

Run inside a namespace::

    python tests/delay_relay.py --listen 10.1.2.3:8000 --to 127.0.0.1:8001 --delay-ms 10 \
        --stats stats.json

The stats file (JSON: connections, counted requests by client address, observed delay) is
written on SIGTERM, SIGINT and SIGUSR1.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

CHUNK = 65536


class RequestCounter:
    """Counts HTTP/1.1 requests ``POST <path>`` in a client-to-server byte stream."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.buffer = b""
        self.body_left = 0
        self.pending = False  # the request whose body is being read is one to count
        self.count = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[taken:]
                self.body_left -= taken
                if self.body_left:
                    return
                self._ended()
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            target = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
            self.pending = parts[0] == b"POST" and target == self.path
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
                elif name.strip().lower() == b"transfer-encoding":
                    raise ValueError("chunked request bodies are not counted by this relay")
            self.body_left = length
            if not length:
                self._ended()

    def _ended(self) -> None:
        if self.pending:
            self.count += 1
            self.pending = False


class Relay:
    def __init__(self, upstream: tuple[str, int], delay_s: float, count_path: str) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.count_path = count_path.encode() if count_path else b""
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.late_us: list[float] = []  # how much later than due each chunk was written

    def serve(self, listener: socket.socket) -> None:
        while True:
            client, address = listener.accept()
            threading.Thread(
                target=self._connection, args=(client, address[0]), daemon=True
            ).start()

    def _connection(self, client: socket.socket, peer: str) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.connections += 1
        counter = RequestCounter(self.count_path) if self.count_path else None
        closed = [0]
        for source, sink, count in ((client, server, counter), (server, client, None)):
            self._pump(source, sink, count, peer, closed)

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        counter: RequestCounter | None,
        peer: str,
        closed: list[int],
    ) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()

        def read() -> None:
            while True:
                try:
                    data = source.recv(CHUNK)
                except OSError:
                    data = b""
                with ready:
                    queue.append((time.monotonic() + self.delay_s, data))
                    ready.notify()
                if not data:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                late = (time.monotonic() - due) * 1e6
                try:
                    if not data:
                        sink.shutdown(socket.SHUT_WR)
                        break
                    sink.sendall(data)
                except OSError:
                    break
                with self.lock:
                    if len(self.late_us) < 100_000:
                        self.late_us.append(late)
                    if counter is not None:
                        before = counter.count
                        counter.feed(data)
                        if counter.count > before:
                            self.requests[peer] += counter.count - before
            with self.lock:
                closed[0] += 1
                both = closed[0] == 2
            if both:
                source.close()
                sink.close()

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            late = sorted(self.late_us)
            return {
                "connections": self.connections,
                "requests_by_client": dict(self.requests),
                "delay_ms": self.delay_s * 1000,
                "late_us_p50": late[len(late) // 2] if late else None,
                "late_us_max": late[-1] if late else None,
            }


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, required=True, help="delay each way")
    parser.add_argument("--count-path", default="", help="count HTTP requests POST to this path")
    parser.add_argument("--stats", type=Path, help="JSON file written on SIGTERM/SIGINT/SIGUSR1")
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    relay = Relay(args.to, args.delay_ms / 1000, args.count_path)

    def write_stats() -> None:
        if args.stats is not None:
            tmp = args.stats.with_suffix(".tmp")
            tmp.write_text(json.dumps(relay.stats()))
            tmp.replace(args.stats)

    def on_signal(signum: int, _frame: Any) -> None:
        write_stats()
        if signum != signal.SIGUSR1:
            sys.exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, on_signal)
    listener = socket.create_server(args.listen, backlog=512)
    print("ready", flush=True)
    relay.serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
