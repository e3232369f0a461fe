"""The floor: a minimal raw-socket SSE reader, the least a Locust user can do per event.

Each user keeps one HTTP/1.1 keep-alive connection (a gevent socket, Locust patches them),
sends a request built once, reads the status line and the ``request-id`` header, then counts
``event: content_block_delta`` in the raw chunked body as it arrives (no dechunking, no JSON)
and stops at the terminating ``0`` chunk. TTFT is taken at the read that holds the first
delta. It is correct for a server that sends well-formed chunked SSE, and not more.

    locust -f bench/harness/raw_user.py --headless -u 20 -r 20 -t 30s -H http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from urllib.parse import urlsplit

import gevent
from benchcollect import MAX_TOKENS, MODEL, PROMPT, finish_request, stagger_s
from locust import User, constant, task

_now = time.perf_counter_ns
DELTA = b"event: content_block_delta"
STOP = b"event: message_stop"
TAIL = len(DELTA) - 1
END = b"\r\n0\r\n\r\n"  # the last data chunk's CRLF, then the terminating chunk
READ_SIZE = 65536


class RawStreamError(Exception):
    pass


def build_request(host: str, port: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "messages": [{"role": "user", "content": PROMPT}],
        }
    ).encode()
    key = os.environ.get("ANTHROPIC_API_KEY") or "bench-key"
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\nx-api-key: {key}\r\n"
        "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class RawUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        url = urlsplit(self.host or "http://127.0.0.1:8000")
        self.address = (url.hostname or "127.0.0.1", url.port or 80)
        self.request_bytes = build_request(*self.address)
        self.sock: socket.socket | None = None
        gevent.sleep(random.uniform(0.0, stagger_s()))

    def on_stop(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @task
    def chat(self) -> None:
        request_id: str | None = None
        t_first = deltas = 0
        error: Exception | None = None
        t_send = _now()
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=60)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # no read timeout: gevent arms a timer for every read that has to wait
                self.sock.settimeout(None)
            sock = self.sock
            recv = sock.recv
            sock.sendall(self.request_bytes)
            t_send = _now()
            buf = b""
            while True:  # the header block
                data = recv(READ_SIZE)
                if not data:
                    raise RawStreamError("closed before the headers")
                buf += data
                cut = buf.find(b"\r\n\r\n")
                if cut >= 0:
                    break
            now = _now()
            head = buf[:cut].lower()
            at = head.find(b"\r\nrequest-id: ")
            if at >= 0:
                end = head.find(b"\r\n", at + 2)
                request_id = head[at + 14 : end if end >= 0 else len(head)].decode()
            if head[9:12] != b"200":
                raise RawStreamError(f"http_{head[9:12].decode()}")
            data = buf[cut + 4 :]
            tail = b""
            stopped = False
            while True:
                if data:
                    scan = tail + data if tail else data
                    n = scan.count(DELTA)
                    if n:
                        if not t_first:
                            t_first = now
                        deltas += n
                    if not stopped and STOP in scan:
                        stopped = True
                    if scan.endswith(END):
                        break
                    tail = scan[-TAIL:]
                data = recv(READ_SIZE)
                now = _now()
                if not data:
                    raise RawStreamError("closed mid-stream")
            if not stopped:
                raise RawStreamError("no message_stop")
        except Exception as err:
            error = err
            self._close()
        t_end = _now()
        finish_request(
            self.environment,
            request_id,
            t_send,
            t_first,
            t_end,
            deltas,
            error,
            f"{type(error).__name__}: {error}"[:80] if error is not None else None,
        )
