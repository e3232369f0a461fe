"""Candidate (c)/(d): raw ``asyncio.Protocol`` + httptools, timers via ``loop.call_at``.

No task or coroutine per stream: each stream is a chain of timer callbacks that
write pre-framed chunks straight to the transport.

    python bench/candidates/raw_protocol.py --port 8001 --loop uvloop
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from pathlib import Path
from typing import cast

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sse_shape import arg_parser, delta, end_group, parse_request, start_group

_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


class Settings:
    ttft_s: float = 0.2
    tps: float = 50.0


class SSEProtocol(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_emitted",
        "_handle",
        "_keep_alive",
        "_loop",
        "_n",
        "_parser",
        "_t0",
        "_transport",
        "_url",
    )

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._handle: asyncio.TimerHandle | None = None
        self._keep_alive = True
        self._n = 0
        self._emitted = 0
        self._t0 = 0.0

    # transport callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD)
                self._transport.close()

    # httptools callbacks -------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        t = self._transport
        if t is None:
            return
        self._keep_alive = self._parser.should_keep_alive()
        if self._parser.get_method() != b"POST" or not self._url.startswith(b"/v1/messages"):
            t.write(_NOT_FOUND)
            return
        try:
            model, n, in_tok = parse_request(b"".join(self._body))
        except (ValueError, json.JSONDecodeError):
            t.write(_BAD)
            t.close()
            return
        self._t0 = self._loop.time()
        self._n = n
        self._emitted = 0
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
            b"x-emulator-ttft-ms: %.3f\r\n\r\n" % (Settings.ttft_s * 1000.0)
        )
        t.write(head + _chunk(start_group(model, in_tok)))
        self._handle = self._loop.call_at(self._t0 + Settings.ttft_s, self._tick)

    # streaming -----------------------------------------------------------
    def _tick(self) -> None:
        self._handle = None
        t = self._transport
        if t is None:
            return
        step = 1 if self._emitted == 0 else min(3, self._n - self._emitted)
        self._emitted += step
        payload = delta(step)
        if self._emitted >= self._n:
            t.write(_chunk(payload + end_group(self._n)) + b"0\r\n\r\n")
            if not self._keep_alive:
                t.close()
            return
        t.write(_chunk(payload))
        last_token = min(self._emitted + 3, self._n)  # the next delta completes this token
        due = self._t0 + Settings.ttft_s + (last_token - 1) / Settings.tps
        self._handle = self._loop.call_at(due, self._tick)


async def serve(host: str, port: int, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SSEProtocol, host, port, backlog=backlog)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = arg_parser(__doc__ or "")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    p.add_argument(
        "--gc",
        choices=["default", "tuned"],
        default="default",
        help="tuned: gc.freeze() after start-up and thresholds that make full collections rare",
    )
    args = p.parse_args()
    if args.gc == "tuned":
        # A full collection walks every live connection's objects: 30-70 ms at ~20k streams.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
    Settings.ttft_s = args.ttft_ms / 1000.0
    Settings.tps = args.tps
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port, args.backlog))
    else:
        asyncio.run(serve(args.host, args.port, args.backlog))


if __name__ == "__main__":
    main()
