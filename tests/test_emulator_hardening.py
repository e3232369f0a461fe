"""The emulator under abuse: unbounded sizes, pipelining, slow clients, control tokens.

Each test is a probe that was measured against the emulator before issue #11 (figures in
the docstrings) and now holds. Raw sockets are used where an HTTP client would hide the
bytes (pipelining, truncated or slow requests).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess
from loadkit.emulator.stats import OUTCOMES

from .conftest import QUICK_CONFIG, Control, emulator_with_control_token

API_HEADERS = b"x-api-key: k\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
TOKEN = "ctl-0123456789-secret"


# A strict HTTP/1.1 response reader ------------------------------------------------------------
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunked: bool = False

    def json(self) -> Any:
        return json.loads(self.body, parse_constant=_no_constant)

    def events(self) -> list[str]:
        return [line[7:] for line in self.body.decode().split("\n") if line.startswith("event: ")]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class FramingError(AssertionError):
    pass


def parse_responses(
    data: bytes, methods: list[str] | None = None
) -> tuple[list[RawResponse], bytes]:
    """Split ``data`` into complete HTTP/1.1 responses (1xx skipped) and what is left over.

    ``methods`` are the methods of the requests in order (a HEAD response has no body).
    Broken framing raises FramingError.
    """
    out: list[RawResponse] = []
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, data[pos:]
        lines = data[pos:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
            raise FramingError(f"not a status line: {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise FramingError(f"not a header line: {line!r}")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if 100 <= status < 200:
            pos = start
            continue
        method = methods[len(out)] if methods is not None and len(out) < len(methods) else ""
        if method == "HEAD":
            out.append(RawResponse(status, headers))
            pos = start
            continue
        if headers.get("transfer-encoding") == "chunked":
            body, after = _dechunk(data, start)
            if after < 0:
                return out, data[pos:]
            out.append(RawResponse(status, headers, body, chunked=True))
            pos = after
            continue
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise FramingError(f"a response without framing: {headers}")
        if len(data) < start + int(length):
            return out, data[pos:]
        out.append(RawResponse(status, headers, data[start : start + int(length)]))
        pos = start + int(length)


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    """The body of a chunked message from ``pos``, and where it ends (-1: incomplete)."""
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(body), -1
        size_text = data[pos:line_end]
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FramingError(f"bad chunk size {size_text[:40]!r}") from None
        start = line_end + 2
        if len(data) < start + size + 2:
            return bytes(body), -1
        if data[start + size : start + size + 2] != b"\r\n":
            raise FramingError("chunk not followed by CRLF")
        if size == 0:
            return bytes(body), start + 2
        body += data[start : start + size]
        pos = start + size + 2


@dataclass
class Exchange:
    responses: list[RawResponse] = field(default_factory=list)
    leftover: bytes = b""
    closed: bool = False  # the server closed the connection
    seconds: float = 0.0


def address(emulator: EmulatorProcess) -> tuple[str, int]:
    host, port = emulator.base_url.removeprefix("http://").split(":")
    return host, int(port)


def exchange(
    emulator: EmulatorProcess,
    data: bytes | list[bytes],
    expect: int | None = None,
    methods: list[str] | None = None,
    timeout: float = 10.0,
    pause_s: float = 0.0,
) -> Exchange:
    """Send ``data`` (pieces ``pause_s`` apart) from a thread while reading responses, until
    ``expect`` responses are complete, the server closes, or ``timeout``."""
    sock = socket.create_connection(address(emulator))
    pieces = [data] if isinstance(data, bytes) else data

    def send() -> None:
        try:
            for piece in pieces:
                sock.sendall(piece)
                if pause_s:
                    time.sleep(pause_s)
        except OSError:
            pass  # the server refused and closed: what it answered is still read

    sender = threading.Thread(target=send, daemon=True)
    result = Exchange()
    started = time.monotonic()
    sender.start()
    received = b""
    try:
        while time.monotonic() - started < timeout:
            sock.settimeout(max(0.01, timeout - (time.monotonic() - started)))
            try:
                got = sock.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                result.closed = True
                break
            if not got:
                result.closed = True
                break
            received += got
            responses, _ = parse_responses(received, methods)
            if expect is not None and len(responses) >= expect:
                break
    finally:
        sock.close()
        sender.join(timeout=5)
    result.responses, result.leftover = parse_responses(received, methods)
    result.seconds = time.monotonic() - started
    return result


def messages_request(body: dict[str, Any] | bytes, extra: bytes = b"") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n%s%scontent-length: %d\r\n\r\n%s" % (
        API_HEADERS,
        extra,
        len(payload),
        payload,
    )


def assert_api_error(response: RawResponse, status: int, error_type: str) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body[:300])
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"] == response.headers["request-id"]
    return body


def accounted(totals: dict[str, int]) -> int:
    return sum(totals[o] for o in OUTCOMES) + totals["in_flight"]


def http_accounted(http: dict[str, Any]) -> int:
    return http["in_progress"] + sum(http["responses"].values()) + http["closed"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


BODY: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}


# 7. Unbounded sizes -------------------------------------------------------------------------
def test_tokens_per_delta_is_bounded(emulator: EmulatorProcess, control: Control) -> None:
    """Before: ``tokens_per_delta: 20000`` was accepted and prebuilt every delta size,
    blocking the event loop 41.6 s and taking 1.6 GB. Now it is refused (400 naming the
    field; bound [1, 1000]) and the largest allowed value applies at once."""
    started = time.monotonic()
    response = control.http.post("/_emulator/config", json={"tokens_per_delta": 20000}, timeout=5)
    assert response.status_code == 400
    assert "tokens_per_delta" in response.json()["error"]["message"]
    response = control.http.post("/_emulator/config", json={"tokens_per_delta": 1000}, timeout=5)
    assert response.status_code == 200 and response.json()["tokens_per_delta"] == 1000
    assert time.monotonic() - started < 2
    with httpx2.stream(
        "POST",
        f"{emulator.base_url}/v1/messages",
        json={**BODY, "stream": True},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        timeout=10,
    ) as stream:
        text = b"".join(stream.iter_raw()).decode()
    assert text.count("event: content_block_delta") == 2  # 1 token, then the other 9 at once
    assert text.rstrip().endswith('data: {"type":"message_stop"}')


def test_huge_header_gets_431_and_no_memory(emulator: EmulatorProcess, control: Control) -> None:
    """Before: one 200 MB header value added 230 MB of RSS and stalled the loop while it was
    concatenated piece by piece. Now the request line and headers are limited to
    ``http.max_header_bytes`` (64 KiB): past it the request gets 431 in the API's error
    shape, is counted, and the rest is drained and dropped (RSS grows < 30 MB here)."""
    assert emulator.process is not None
    before_rss = rss_mb(emulator.process.pid)
    before = control.stats()
    head = b"GET /_emulator/health HTTP/1.1\r\nhost: x\r\nx-big: "
    filler = b"a" * (1 << 20)
    result = exchange(emulator, [head] + [filler] * 100 + [b"\r\n\r\n"], expect=1, timeout=30)
    assert len(result.responses) == 1, result
    body = assert_api_error(result.responses[0], 431, "invalid_request_error")
    assert "header" in body["error"]["message"].lower()
    assert result.responses[0].headers["connection"] == "close"
    assert rss_mb(emulator.process.pid) - before_rss < 30
    after = control.stats()
    assert after["http"]["responses"].get("431", 0) == before["http"]["responses"].get("431", 0) + 1
    assert control.http.get("/_emulator/health").status_code == 200  # the loop is free


def test_body_over_32mb_gets_413_request_too_large(
    emulator: EmulatorProcess, control: Control
) -> None:
    """The Messages API refuses requests over 32 MB with 413 ``request_too_large``.

    Source: the API docs' "Request size limits" ("32 MB for standard endpoints, including the
    Messages API and the Token Counting API; exceeding it returns a 413 request_too_large
    error from Cloudflare"), https://docs.claude.com/ja/api/overview, and the error list,
    https://platform.claude.com/docs/en/api/errors (413 request_too_large), as stored by the
    docs search on 2026-11-30 (the pages carry no version; that snapshot lists Claude Opus
    4.6 as a legacy model). Before: a body over the limit was read in full and dropped, and
    a declared Content-Length over it was not refused until the whole body had arrived.
    Now a declared length over the limit is refused before any body is read, a chunked body
    as soon as it passes the limit; both counted (``invalid``), then the connection closes.
    """
    declared = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n" % (
        API_HEADERS,
        (32 << 20) + 1,
    )
    result = exchange(emulator, declared, expect=1, timeout=5)
    assert len(result.responses) == 1 and result.seconds < 3
    assert_api_error(result.responses[0], 413, "request_too_large")
    assert control.http.get("/_emulator/config").json()["http"]["max_body_bytes"] == 32 << 20

    control.configure({"http": {"max_body_bytes": 4096}}).raise_for_status()
    chunked = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n%stransfer-encoding: chunked\r\n\r\n"
        % API_HEADERS
    )
    pieces = [chunked] + [b"400\r\n" + b" " * 1024 + b"\r\n"] * 8
    result = exchange(emulator, pieces, expect=1, timeout=5)
    assert_api_error(result.responses[0], 413, "request_too_large")
    # at the limit exactly: accepted
    padded = json.dumps(BODY).encode()
    padded += b" " * (4096 - len(padded))
    ok = exchange(emulator, messages_request(padded), expect=1, timeout=5)
    assert ok.responses[0].status == 200
    totals = control.stats()["totals"]
    assert totals["received"] == 3 == accounted(totals)
    assert totals["invalid"] == 2 and totals["completed"] == 1


def test_deep_json_gets_400_and_is_counted(emulator: EmulatorProcess, control: Control) -> None:
    """Before: a body nested 100,000 deep gave 500 with a traceback, and was not counted.
    Now nesting is limited (``http.max_json_depth``, 64): 400 invalid_request_error naming
    where, counted as ``invalid``; 64 levels are fine."""
    deep = b'{"model":"claude-haiku-4-5","max_tokens":5,"messages":[],"metadata":'
    deeper = deep + b"[" * 100_000 + b"]" * 100_000 + b"}"
    very_deep = exchange(emulator, messages_request(deeper), expect=1)
    body = assert_api_error(very_deep.responses[0], 400, "invalid_request_error")
    assert "nested more than 64 levels" in body["error"]["message"]
    too_deep = {**BODY, "metadata": {"x": json.loads("[" * 63 + "]" * 63)}}  # 65 levels
    result = exchange(emulator, messages_request(too_deep), expect=1)
    body = assert_api_error(result.responses[0], 400, "invalid_request_error")
    assert body["error"]["message"].startswith("metadata.x.0.0.")
    just_fits = {**BODY, "metadata": {"x": json.loads("[" * 62 + "]" * 62)}}  # 64 levels
    assert exchange(emulator, messages_request(just_fits), expect=1).responses[0].status == 200
    totals = control.stats()["totals"]
    assert totals["received"] == 3 == accounted(totals)
    assert totals["invalid"] == 2 and totals["completed"] == 1
    assert "Traceback" not in emulator.stderr_text()


@pytest.mark.parametrize(
    ("raw_body", "named"),
    [
        # 10^309: an OverflowError deep in the rate limiter before (500, not counted)
        (b'{"model":"claude-haiku-4-5","max_tokens":1' + b"0" * 309 + b","
         b'"messages":[{"role":"user","content":"hi"}]}', "max_tokens: Input should be a finite"),
        (b'{"model":"claude-haiku-4-5","max_tokens":9223372036854775808,'
         b'"messages":[{"role":"user","content":"hi"}]}', "max_tokens: Input should be a finite"),
        (b'{"model":"claude-haiku-4-5","max_tokens":5,"temperature":1e400,'
         b'"messages":[{"role":"user","content":"hi"}]}', "temperature: Input should be a finite"),
        (b'{"model":"claude-haiku-4-5","max_tokens":5,"metadata":{"a":[1,NaN]},'
         b'"messages":[{"role":"user","content":"hi"}]}', "metadata.a.1: Input should be a finite"),
        (b'{"model":"claude-haiku-4-5","max_tokens":5,"top_p":-Infinity,'
         b'"messages":[{"role":"user","content":"hi"}]}', "top_p: Input should be a finite"),
        (b'{"model":"claude-haiku-4-5","max_tokens":1000000,'
         b'"messages":[{"role":"user","content":"hi"}]}',
         "max_tokens: 1000000 > 64000, which is the maximum allowed number of output tokens"),
        (b'{"model":"claude-haiku-4-5","max_tokens":5,"top_k":-1,'
         b'"messages":[{"role":"user","content":"hi"}]}', "top_k: Input should be an integer"),
    ],
)  # fmt: skip
def test_huge_or_non_finite_numbers_get_400_naming_the_field(
    emulator: EmulatorProcess, control: Control, raw_body: bytes, named: str
) -> None:
    """Before: ``max_tokens`` 10^309 gave 500 (OverflowError) with no outcome counted, and
    NaN/Infinity were accepted. Now every number must be finite and within 64 bits, and
    each known field within its range (``max_tokens`` up to the model's maximum output, as
    the API says it): else 400 invalid_request_error naming the field, counted."""
    result = exchange(emulator, messages_request(raw_body), expect=1)
    body = assert_api_error(result.responses[0], 400, "invalid_request_error")
    assert body["error"]["message"].startswith(named), body
    totals = control.stats()["totals"]
    assert totals["received"] == 1 == totals["invalid"] == accounted(totals)


def test_config_refuses_infinity_and_get_config_stays_valid_json(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Before: ``Infinity`` was accepted in a config patch and ``GET /_emulator/config`` then
    returned invalid JSON. Now non-finite and out-of-range values are refused (400 naming
    the field) and the config stays strict JSON."""
    for raw, named in [
        (b'{"cache": {"default_ttl_s": Infinity}}', "cache.default_ttl_s"),
        (b'{"models": {"claude-haiku-4-5": {"decode_tokens_per_s": 1e400}}}', "decode_tokens"),
        (b'{"faults": {"slow_first_byte_ms": NaN}}', "faults.slow_first_byte_ms"),
        (b'{"served_log_size": 100000000}', "served_log_size"),
        (b'{"models": {"claude-haiku-4-5": {"ttft_base_ms": 1e12}}}', "ttft_base_ms"),
        (b'{"rate_limits": {"haiku": {"requests_per_minute": 1e300}}}', "requests_per_minute"),
        (b'{"http": {"header_timeout_s": 0}}', "http.header_timeout_s"),
    ]:
        response = control.http.post("/_emulator/config", content=raw)
        assert response.status_code == 400, raw
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and named in error["message"], error
    text = control.http.get("/_emulator/config").text
    config = json.loads(text, parse_constant=_no_constant)
    assert config["cache"]["default_ttl_s"] == 300


# 8. Pipelining ------------------------------------------------------------------------------
def test_pipelined_stream_and_plain_requests_answered_in_order(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Before: a stream plus two plain requests in one write got the plain responses written
    inside the chunked stream, the stream cut, and 3 completions counted. Now requests on a
    connection are answered in order, one at a time: the stream whole, then each answer."""
    stream = messages_request({**BODY, "max_tokens": 20, "stream": True})
    plain = messages_request({**BODY, "max_tokens": 2})
    result = exchange(emulator, stream + plain + plain, expect=3)
    assert [r.status for r in result.responses] == [200, 200, 200], result
    first, second, third = result.responses
    assert first.chunked and first.headers["content-type"].startswith("text/event-stream")
    events = first.events()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert events.count("content_block_delta") == 8  # 1 token, then 3 per delta: 20 tokens
    for answer in (second, third):
        assert answer.json()["usage"]["output_tokens"] == 2
    assert result.leftover == b""
    totals = control.stats()["totals"]
    assert totals["received"] == 3 == totals["completed"] == accounted(totals)


def test_many_pipelined_requests_answered_in_order(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Before: with 1,000 pipelined requests, 429s came back before the earlier 200s. Now the
    k-th response answers the k-th request (each asks a different max_tokens, which a 200
    reports back), and the counts are exact."""
    control.configure(
        {
            "models": {"claude-haiku-4-5": {"ttft_base_ms": 0, "decode_tokens_per_s": 1e7}},
            "output_tokens": {"kind": "fixed", "value": 5000},
            "rate_limits": {"haiku": {"output_tokens_per_minute": 200_000}},
        }
    ).raise_for_status()
    count = 1000
    data = b"".join(messages_request({**BODY, "max_tokens": k + 1}) for k in range(count))
    result = exchange(emulator, data, expect=count, timeout=60)
    assert len(result.responses) == count
    statuses = [r.status for r in result.responses]
    assert set(statuses) == {200, 429}
    for k, response in enumerate(result.responses):
        if response.status == 200:
            assert response.json()["usage"]["output_tokens"] == k + 1
    totals = control.stats()["totals"]
    assert totals["received"] == count == accounted(totals)
    assert totals["completed"] == statuses.count(200)
    assert totals["rate_limited"] == statuses.count(429)


def test_pipelined_requests_left_behind_are_counted(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Requests pipelined behind a long stream, whose client leaves mid-stream: each one is
    counted (the stream and the waiting ones as ``client_closed``)."""
    control.configure({"models": {"claude-haiku-4-5": {"decode_tokens_per_s": 20}}})
    stream = messages_request({**BODY, "max_tokens": 20, "stream": True})
    plain = messages_request(BODY)
    sock = socket.create_connection(address(emulator))
    sock.sendall(stream + plain * 3)
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 5
    while control.stats()["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = control.stats()
    totals = stats["totals"]
    assert totals["received"] == 4 == totals["client_closed"] == accounted(totals)
    http = stats["http"]
    assert http["received"] == http_accounted(http)


def test_second_pipelined_stream_notices_the_client_leaving(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Two streams pipelined; the client reads the first and leaves during the second: the
    first is ``completed``, the second ``client_closed`` (not served to a closed socket)."""
    control.configure({"models": {"claude-haiku-4-5": {"decode_tokens_per_s": 40}}})
    stream = messages_request({**BODY, "max_tokens": 20, "stream": True})
    sock = socket.create_connection(address(emulator))
    sock.sendall(stream + stream)
    received = b""
    sock.settimeout(5)
    while not parse_responses(received)[0]:
        received += sock.recv(65536)
    time.sleep(0.2)  # the second stream is under way
    sock.close()
    deadline = time.monotonic() + 5
    while control.stats()["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    totals = control.stats()["totals"]
    assert totals["received"] == 2 == accounted(totals)
    assert totals["completed"] == 1 and totals["client_closed"] == 1


# 9. served, slow clients -------------------------------------------------------------------
def _fill_served(emulator: EmulatorProcess, control: Control, records: int) -> None:
    """``records`` quick 429s (each one is a served record), pipelined on 4 connections."""
    control.configure(
        {"rate_limits": {"haiku": {"requests_per_minute": 1}}, "served_log_size": records}
    ).raise_for_status()
    control.reset()
    request = messages_request(BODY)

    def one_connection(batches: int) -> None:
        for _ in range(batches):
            result = exchange(emulator, request * 500, expect=500, timeout=60)
            assert len(result.responses) == 500

    threads = [threading.Thread(target=one_connection, args=(records // 2000,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert control.stats()["totals"]["received"] == records


@pytest.mark.timing
def test_served_is_streamed_without_stalling_the_loop(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Before: ``GET /_emulator/served`` with 100k records stalled the event loop 2.7 s (20k:
    ~0.5 s), delaying every stream it exists to check. Now it is sent in chunks of 256
    records, one per loop turn and only as fast as the client reads: a health probe on
    another connection is never held more than a few ms (measured: 7 ms worst with 100k)."""
    records = 20_000
    _fill_served(emulator, control, records)
    worst = [0.0]
    stop = threading.Event()

    def probe() -> None:
        with httpx2.Client(base_url=emulator.base_url, timeout=10) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get("/_emulator/health").raise_for_status()
                worst[0] = max(worst[0], time.perf_counter() - started)
                time.sleep(0.001)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.2)
    try:
        response = control.http.get("/_emulator/served")
    finally:
        time.sleep(0.1)
        stop.set()
        thread.join()
    assert worst[0] < 0.15, f"the loop was held {worst[0] * 1000:.0f} ms"
    served = json.loads(response.content, parse_constant=_no_constant)
    assert len(served) == records and response.headers["x-emulator-served-total"] == str(records)
    assert sum(s["outcome"] == "rate_limited" for s in served) == records - 1


def test_served_pagination_and_request_id(emulator: EmulatorProcess, control: Control) -> None:
    """``?offset=&limit=`` pages through the records (oldest first, total in
    ``x-emulator-served-total``); ``?request_id=`` still finds one record, as a list."""
    ids = []
    for _ in range(5):
        result = exchange(emulator, messages_request(BODY), expect=1)
        ids.append(result.responses[0].headers["request-id"])
    everything = control.http.get("/_emulator/served").json()
    assert [s["request_id"] for s in everything] == ids
    page = control.http.get("/_emulator/served", params={"offset": 1, "limit": 2})
    assert [s["request_id"] for s in page.json()] == ids[1:3]
    assert page.headers["x-emulator-served-total"] == "5"
    assert control.http.get("/_emulator/served", params={"offset": 9}).json() == []
    assert control.served(ids[3])["request_id"] == ids[3]
    assert control.http.get("/_emulator/served", params={"request_id": "nope"}).json() == []
    bad = control.http.get("/_emulator/served", params={"limit": "-1"})
    assert bad.status_code == 400 and "limit" in bad.json()["error"]["message"]


SHORT_TIMEOUTS = {**QUICK_CONFIG, "http": {"header_timeout_s": 0.4, "idle_timeout_s": 0.8}}


@pytest.fixture(scope="module")
def impatient() -> Iterator[EmulatorProcess]:
    """An emulator with short header (0.4 s) and idle (0.8 s) timeouts."""
    with EmulatorProcess(config=SHORT_TIMEOUTS, seed=3) as emu:
        yield emu


def test_slowloris_header_timeout_gets_408(impatient: EmulatorProcess) -> None:
    """Before: a client sending its headers a byte at a time was held forever. Now the
    request line and headers must arrive within ``http.header_timeout_s`` (default 10 s;
    0.4 s here): else 408 in the API's error shape, counted, and the connection closes."""
    head = b"GET /_emulator/health HTTP/1.1\r\nhost: x\r\nx-slow: "
    result = exchange(impatient, [head] + [b"a"] * 100, pause_s=0.05, timeout=5)
    assert result.closed and len(result.responses) == 1
    body = assert_api_error(result.responses[0], 408, "invalid_request_error")
    assert "headers were not received within 0.4 s" in body["error"]["message"]
    assert 0.35 < result.seconds < 2


def test_idle_keep_alive_connection_is_closed(impatient: EmulatorProcess) -> None:
    """A keep-alive connection idle for ``http.idle_timeout_s`` (default 60 s; 0.8 s here)
    is closed without a word, whether it sent a request before or nothing at all."""
    for data in [b"GET /_emulator/health HTTP/1.1\r\nhost: x\r\n\r\n", b""]:
        result = exchange(impatient, data, timeout=5)
        assert result.closed and 0.7 < result.seconds < 2.5
        assert [r.status for r in result.responses] == ([200] if data else [])


def test_stalled_body_gets_408(impatient: EmulatorProcess) -> None:
    """A body that stops arriving for ``http.idle_timeout_s`` gets 408 (counted as an
    ``invalid`` Messages request), and the connection closes."""
    before = httpx2.get(f"{impatient.base_url}/_emulator/stats").json()["totals"]
    head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n%scontent-length: 100\r\n\r\n{" % API_HEADERS
    result = exchange(impatient, head, timeout=5)
    assert result.closed and len(result.responses) == 1
    body = assert_api_error(result.responses[0], 408, "invalid_request_error")
    assert "body stalled" in body["error"]["message"]
    after = httpx2.get(f"{impatient.base_url}/_emulator/stats").json()["totals"]
    assert after["invalid"] == before["invalid"] + 1
    assert after["received"] == before["received"] + 1 == accounted(after)


def test_long_stream_outlives_idle_timeout(impatient: EmulatorProcess) -> None:
    """No timeout runs while the emulator is answering: a 1.25 s stream on an emulator whose
    idle timeout is 0.8 s arrives whole."""
    httpx2.post(
        f"{impatient.base_url}/_emulator/config",
        json={"models": {"claude-haiku-4-5": {"decode_tokens_per_s": 16}}},
    ).raise_for_status()
    try:
        request = messages_request({**BODY, "max_tokens": 20, "stream": True})
        result = exchange(impatient, request, expect=1, timeout=5)
    finally:
        httpx2.post(
            f"{impatient.base_url}/_emulator/config",
            json={"models": {"claude-haiku-4-5": {"decode_tokens_per_s": 400}}},
        ).raise_for_status()
    assert result.seconds > 1.0
    assert result.responses[0].status == 200 and result.responses[0].events()[-1] == "message_stop"


# 5. Control token ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded() -> Iterator[EmulatorProcess]:
    """An emulator started with LOADKIT_EMULATOR_CONTROL_TOKEN in its environment."""
    with emulator_with_control_token(QUICK_CONFIG, 5, TOKEN) as emu:
        yield emu


def _check_guarded(emu: EmulatorProcess) -> None:
    url = emu.base_url
    bearer = {"authorization": f"Bearer {TOKEN}"}
    header = {"x-loadkit-control-token": TOKEN}
    for method, path, body in [
        ("POST", "/_emulator/config", {"tokens_per_delta": 2}),
        ("POST", "/_emulator/reset", None),
        ("GET", "/_emulator/config", None),
        ("GET", "/_emulator/anything", None),
    ]:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-loadkit-control-token": ""}):
            response = httpx2.request(method, url + path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            error = response.json()
            assert (
                error["type"] == "error" and error["request_id"] == response.headers["request-id"]
            )
            assert error["error"]["type"] == "authentication_error"
            assert TOKEN not in response.text
    assert httpx2.post(url + "/_emulator/config", json={}, headers=bearer).status_code == 200
    assert httpx2.post(url + "/_emulator/reset", headers=header).status_code == 200
    assert httpx2.get(url + "/_emulator/config", headers=header).json()["tokens_per_delta"] == 3
    for open_path in ("/_emulator/health", "/_emulator/stats", "/_emulator/served"):
        assert httpx2.get(url + open_path).status_code == 200, open_path
    # the API itself is untouched by the control token
    api = httpx2.post(
        url + "/v1/messages",
        json=BODY,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    assert api.status_code == 200
    assert TOKEN not in emu.stderr_text()


def test_control_token_required_for_mutating_endpoints(guarded: EmulatorProcess) -> None:
    """Before: anyone who could reach the emulator could reconfigure or reset it mid-run.
    Now, with a control token (``LOADKIT_EMULATOR_CONTROL_TOKEN``, or ``loadkit emulator
    --control-token``), ``POST /_emulator/config``, ``POST /_emulator/reset`` and ``GET
    /_emulator/config`` (it lists the API keys) need ``Authorization: Bearer <token>`` or
    ``x-loadkit-control-token``, else 401 authentication_error in the API's shape; health,
    stats and served stay open (read-only; the harness reads stats for its accounting). The
    token is never echoed nor logged."""
    _check_guarded(guarded)


def test_control_token_from_the_command_line() -> None:
    """``loadkit emulator --control-token TOKEN`` guards the same endpoints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loadkit", "emulator", "--port", "0", "--control-token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LOADKIT_EMULATOR_CONTROL_TOKEN"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert httpx2.post(url + "/_emulator/reset").status_code == 401
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert httpx2.post(url + "/_emulator/reset", headers=bearer).status_code == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert TOKEN not in line and TOKEN not in err
