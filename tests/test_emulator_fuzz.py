"""Fuzz the emulator's HTTP front with raw sockets: random and mutated requests for a bounded
time, against a real emulator process.

Inputs (fixed seed; ``LOADKIT_FUZZ_SECONDS``, default 10, bounds the time; the count tried
is printed and recorded as the ``fuzz_inputs`` property; a 10 s run on this machine tries
~950 connections carrying ~2,050 requests, and at least 150 connections are required):
methods, paths (the API's, the control endpoints', others), headers (auth or not, betas,
``expect: 100-continue``, random names and values), bodies (the Messages request with
fields removed or replaced by wrong types, huge and non-finite numbers, deep nesting, long
or odd strings; random bytes; truncated JSON), framing (content-length or chunked, split at
random, pipelined 1-5 deep, HTTP/1.0, ``connection: close``), broken tails (garbage, bad
lengths, bad chunks, oversized heads and bodies, control bytes), truncated requests,
byte-mutated requests, and requests sent slowly.

Asserted: every answer is a complete HTTP/1.1 response with a JSON error in the API's shape
(``{"type":"error","error":{"type","message"},"request_id"}`` matching ``request-id``), or a
valid 200 (JSON, or a complete SSE stream ending in ``message_stop`` or ``error``), each
answering its own request in order; no connection hangs; the server never crashed nor logged
a bug; and its counts are exact: per status, the server counted exactly the responses the
clients read, nothing ended unanswered, every pipelined batch got one answer per complete
request, and the Messages accounting holds (received == in_flight + sum of outcomes, with
in_flight back to 0).
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import emulator_with_control_token
from .test_emulator_hardening import (
    FramingError,
    RawResponse,
    accounted,
    http_accounted,
    parse_responses,
)

SEED = 20261130
SECONDS = float(os.environ.get("LOADKIT_FUZZ_SECONDS", "10"))
THREADS = 6
MIN_CONNECTIONS = 150  # a loaded CI machine still tries this many in the time
MODELS = ("claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-5")
FUZZ_CONFIG: dict[str, Any] = {
    "models": {
        m: {
            "ttft_base_ms": 2,
            "prefill_tokens_per_s": 1e7,
            "decode_tokens_per_s": 5000,
            "ttft_jitter": 0,
            "decode_jitter": 0,
        }
        for m in MODELS
    },
    "output_tokens": {"kind": "fixed", "value": 7},
    "faults": {"api_error_rate": 0.03, "overloaded_rate": 0.03, "midstream_error_rate": 0.05},
    "fractional_retry_after": True,
    "served_log_size": 300,
    "http": {
        "max_header_bytes": 4096,
        "max_body_bytes": 65536,
        "max_json_depth": 32,
        "header_timeout_s": 0.3,
        "idle_timeout_s": 0.5,
    },
}
ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
}
PATHS = [
    "/v1/messages",
    "/v1/messages",
    "/v1/messages",
    "/v1/messages?beta=true",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/v1/models?limit=2&after_id=claude-opus-4-6",
    "/v1/models/claude-haiku-4-5",
    "/v1/models/nope",
    "/_emulator/health",
    "/_emulator/stats",
    "/_emulator/served?limit=3",
    "/_emulator/served?offset=x",
    "/_emulator/served",
    "/_emulator/config",
    "/_emulator/reset",
    "/_emulator/",
    "/",
    "/v2/nothing",
    "/v1/messages/../models",
    "/%00%ff",
    "*",
]
METHODS = ["POST"] * 6 + ["GET"] * 3 + ["HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]


class Raw:
    """A JSON fragment written as is (NaN, 1e400, a 400-digit integer, a deep nest)."""

    def __init__(self, text: str) -> None:
        self.text = text


def render(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(18)
    if pick == 0:
        return Raw(rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]))
    if pick == 1:
        return Raw(str(rng.choice([10**19, 2**63, -(2**63) - 1])) + "0" * rng.randrange(400))
    if pick == 2:
        n = rng.randrange(20, 80)
        return Raw("[" * n + "]" * n)
    if pick == 3:
        return "x" * rng.randrange(0, 3000)
    if pick == 4:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 30)))
    if pick == 5:
        return rng.choice([None, True, False, 0, -1, 1, 0.5, 2**62, -(2**62), 1.5e308])
    if pick == 6 and depth < 4:
        return [odd_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if pick == 7 and depth < 4:
        return {f"k{i}": odd_value(rng, depth + 1) for i in range(rng.randrange(0, 4))}
    if pick == 8:
        return [{"role": rng.choice(["user", "assistant", "robot"]), "content": odd_value(rng, 3)}]
    if pick == 9:
        return [{"type": rng.choice(["text", "image", "tool_use", "nope"]), "text": "hi"}]
    if pick == 10:
        return {"type": "ephemeral", "ttl": rng.choice(["5m", "1h", "2h"])}
    return rng.choice([1, 5, 64000, 128000, 10**6, "claude-haiku-4-5", "fast", "", [], {}])


def messages_body(rng: random.Random, damage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": rng.choice([*MODELS, "claude-haiku-4-5", "claude-nope"]),
        "max_tokens": rng.choice([1, 3, 10, 50, 64000]),
        "messages": [{"role": "user", "content": "hi " * rng.randrange(1, 20)}],
    }
    if rng.random() < 0.5:
        body["stream"] = True
    if rng.random() < 0.15:
        body["speed"] = "fast"
    if rng.random() < 0.2:
        body["system"] = [
            {"type": "text", "text": "s" * 5000, "cache_control": {"type": "ephemeral"}}
        ]
    if rng.random() < 0.1:
        body["temperature"] = rng.choice([0, 0.7, 1, 2])
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3]) if damage else 0):
        key = rng.choice([*body, "metadata", "tools", "top_k", "top_p", "stop_sequences"])
        if rng.random() < 0.3:
            body.pop(key, None)
        else:
            body[key] = odd_value(rng)
    return body


def request_body(rng: random.Random, path: str) -> bytes:
    pick = rng.random()
    if pick < 0.75 and path.startswith("/v1/messages"):
        return render(messages_body(rng)).encode("utf-8", "surrogatepass")
    if pick < 0.8:
        return b""
    if pick < 0.88:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if pick < 0.94:
        text = render(messages_body(rng)).encode("utf-8", "surrogatepass")
        return text[: rng.randrange(len(text))]
    return render(odd_value(rng)).encode("utf-8", "surrogatepass")


def header_token(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_"
    return "x-" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20)))


def header_value(rng: random.Random) -> bytes:
    chars = [rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(0, 60))]
    if rng.random() < 0.2:
        chars.append(rng.randrange(0x80, 0x100))
    return bytes(chars).strip()


@dataclass
class Sent:
    method: str
    path: str
    data: bytes
    stream: bool = False


def build(
    rng: random.Random,
    close: bool = False,
    version: str = "1.1",
    method: str | None = None,
    path: str | None = None,
    plausible: bool = False,
) -> Sent:
    """One complete, well-framed request (its content may be anything). ``plausible``: a
    Messages request as a client would send it, its body sometimes damaged."""
    if plausible:
        method, path = "POST", rng.choice(["/v1/messages"] * 6 + ["/v1/messages/count_tokens"])
    method = method or rng.choice(METHODS)
    path = path or rng.choice(PATHS)
    if plausible and rng.random() < 0.7:
        body = render(messages_body(rng, damage=rng.random() < 0.3)).encode()
    elif method not in ("GET", "HEAD") or rng.random() < 0.1:
        body = request_body(rng, path)
    else:
        body = b""
    headers: list[tuple[bytes, bytes]] = [(b"host", b"emulator")]
    if plausible or rng.random() < 0.85:
        headers.append(rng.choice([(b"x-api-key", b"k"), (b"authorization", b"Bearer k")]))
    if plausible or rng.random() < 0.85:
        headers.append((b"anthropic-version", b"2023-06-01"))
    if rng.random() < 0.3:
        headers.append((b"anthropic-beta", b"fast-mode-2026-02-01, other-beta"))
    if body and rng.random() < 0.1:
        headers.append((b"expect", b"100-continue"))
    for _ in range(rng.randrange(0, 4)):
        headers.append((header_token(rng).encode(), header_value(rng)))
    if close:
        headers.append((b"connection", b"close"))
    chunked = bool(body) and version == "1.1" and rng.random() < 0.3
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        pieces, rest = [], body
        while rest:
            size = rng.randrange(1, max(2, len(rest) + 1))
            pieces.append(b"%x\r\n%s\r\n" % (size, rest[:size]))
            rest = rest[size:]
        payload = b"".join(pieces) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH") or rng.random() < 0.3:
            headers.append((b"content-length", str(len(body)).encode()))
        payload = body
    rng.shuffle(headers)
    head = b"%s %s HTTP/%s\r\n" % (method.encode(), path.encode(), version.encode())
    head += b"".join(b"%s: %s\r\n" % pair for pair in headers) + b"\r\n"
    stream = b'"stream":true' in body and path.startswith("/v1/messages")
    return Sent(method, path, head + payload, stream)


def broken_tail(rng: random.Random) -> bytes:
    """Bytes that break HTTP framing: always refused (400, 413 or 431)."""
    kind = rng.randrange(9)
    messages = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n"
    if kind == 0:
        return rng.choice([b"\x16\x03\x01\x02\x00", b"{", b" GET", b"\x00", b"get / HTTP/1.1"]) + (
            bytes(rng.randrange(256) for _ in range(rng.randrange(0, 50))) + b"\r\n\r\n"
        )
    if kind == 1:
        return messages + b"content-length: " + rng.choice([b"abc", b"-1", b"1 2", b"9" * 30])
    if kind == 2:
        return messages + b"x-big: " + b"a" * rng.randrange(4200, 20000) + b"\r\n\r\n"
    if kind == 3:
        return messages + b"content-length: %d\r\n\r\n{" % rng.randrange(65537, 10**9)
    if kind == 4:
        return (
            messages + b"transfer-encoding: chunked\r\n\r\n" + rng.choice([b"zz\r\n", b"5\r\nab"])
        )
    if kind == 5:
        return messages + b"x-a: a\x01b\r\n\r\n"
    if kind == 6:
        return b"GET /_emulator/health HTTP/" + rng.choice([b"9.9", b"1", b"x"]) + b"\r\n\r\n"
    if kind == 7:
        return messages + b"content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
    return b"GET /" + b"a" * rng.randrange(4200, 9000) + b" HTTP/1.1\r\n\r\n"


# checks --------------------------------------------------------------------------------------
def check_answer(response: RawResponse, sent: Sent | None) -> None:
    """An API-shaped answer to ``sent`` (None: to a broken tail)."""
    status = response.status
    if sent is not None and sent.method == "HEAD":
        assert status in (401, 404, 405), status  # no route takes HEAD; no body is sent
        return
    content_type = response.headers.get("content-type", "")
    if status != 200:
        body = response.json()
        assert body["type"] == "error" and set(body) == {"type", "error", "request_id"}, body
        assert body["error"]["type"] in ERROR_TYPES, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert body["request_id"] == response.headers["request-id"]
        return
    assert sent is not None, "a broken request was answered 200"
    if content_type.startswith("text/event-stream"):
        assert sent.stream and response.chunked
        blocks = [b for b in response.body.decode().split("\n\n") if b]
        names = []
        for block in blocks:
            lines = block.split("\n")
            assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
            json.loads(lines[1][6:], parse_constant=_refuse)
            names.append(lines[0][7:])
        assert names[0] == "message_start" and names[-1] in ("message_stop", "error"), names
        return
    body = response.json()
    path = sent.path.split("?")[0]
    if path == "/v1/messages":
        assert body["type"] == "message" and not sent.stream, body
    elif path == "/v1/messages/count_tokens":
        assert isinstance(body["input_tokens"], int)
    elif path == "/v1/models":
        assert body["data"] and "has_more" in body
    elif path.startswith("/v1/models/"):
        assert body["type"] == "model"
    elif path == "/_emulator/health":
        assert body == {"status": "ok"}
    elif path == "/_emulator/stats":
        assert "totals" in body
    elif path == "/_emulator/served":
        assert isinstance(body, list)
    else:
        raise AssertionError(f"200 for {sent.method} {sent.path}: {body}")


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} in JSON")


def check_shape(response: RawResponse) -> None:
    """An API-shaped answer to a request of unknown content (a mutated one)."""
    if response.status != 200:
        check_answer(response, None)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        check_answer(response, Sent("POST", "/v1/messages", b"", stream=True))
    else:
        response.json()


# one connection --------------------------------------------------------------------------------
@dataclass
class Tally:
    connections: int = 0
    requests: int = 0
    responses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    messages: int = 0  # answers the server must count as Messages requests
    maybe_messages: int = 0  # answers it may (a mutated or truncated request's path is unsure)
    failures: list[str] = field(default_factory=list)


def converse(
    address: tuple[str, int],
    pieces: list[bytes],
    methods: list[str],
    until_close: bool,
    expect: int | None,
    pause_s: float = 0.0,
) -> tuple[list[RawResponse], bytes, bool]:
    sock = socket.create_connection(address)
    received = b""
    closed = False
    try:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break  # refused and closed: read what was answered
            if pause_s:
                time.sleep(pause_s)
        deadline = time.monotonic() + 3.0
        while True:
            responses, _ = parse_responses(received, methods)
            if expect is not None and len(responses) >= expect and not until_close:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no answer in 3 s: {len(responses)} responses, expected {expect}"
                )
            sock.settimeout(remaining)
            try:
                got = sock.recv(1 << 16)
            except ConnectionResetError:
                got = b""
            if not got:
                closed = True
                break
            received += got
    finally:
        sock.close()
    responses, leftover = parse_responses(received, methods)
    return responses, leftover, closed


def one_case(rng: random.Random, address: tuple[str, int], tally: Tally) -> None:
    kind = rng.choices(
        ["pipeline", "broken", "truncated", "mutated", "slow"], weights=[45, 20, 10, 17, 8]
    )[0]
    sends: list[Sent] = []
    tail = b""
    until_close = False
    if kind in ("pipeline", "broken", "truncated"):
        count = rng.randrange(1, 6) if kind == "pipeline" else rng.randrange(0, 3)
        http10 = kind == "pipeline" and rng.random() < 0.05
        close_last = kind == "pipeline" and rng.random() < 0.3
        for i in range(count):
            last = i == count - 1
            sends.append(
                build(
                    rng,
                    close=close_last and last,
                    version="1.0" if http10 else "1.1",
                    plausible=rng.random() < 0.5,
                )
            )
            if http10:
                break
        until_close = close_last or http10
        if kind == "broken":
            tail, until_close = broken_tail(rng), True
        elif kind == "truncated":
            method = rng.choice([m for m in METHODS if m != "HEAD"])
            whole = build(rng, method=method).data
            tail, until_close = whole[: rng.randrange(1, len(whole))], True
    elif kind == "mutated":
        method = rng.choice([m for m in METHODS if m != "HEAD"])
        data = bytearray(build(rng, close=True, method=method).data)
        for _ in range(rng.randrange(1, 5)):
            spot = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[spot] = rng.randrange(256)
            elif action == 1:
                data.insert(spot, rng.randrange(256))
            else:
                del data[spot]
        tail, until_close = bytes(data), True
    else:  # slow: one request in pieces, each well within the header timeout
        sends.append(build(rng, close=rng.random() < 0.5, plausible=rng.random() < 0.5))
        until_close = b"connection: close" in sends[0].data
    stream = b"".join(s.data for s in sends) + tail
    if kind == "slow":
        cuts = sorted(rng.sample(range(1, len(stream)), min(4, len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    else:
        cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randrange(0, 4), len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    methods = [s.method for s in sends] + ["GET"]
    expect = len(sends) + (1 if kind == "broken" else 0) if kind != "mutated" else None
    try:
        responses, leftover, closed = converse(
            address, pieces, methods, until_close, expect, pause_s=0.03 if kind == "slow" else 0
        )
        # One answer per complete request, in order; then, for a broken tail, its refusal.
        if kind == "mutated":
            assert len(responses) <= 2, len(responses)
        elif kind == "truncated":
            assert len(responses) in (len(sends), len(sends) + 1), (len(responses), len(sends))
        else:
            assert len(responses) == expect, (len(responses), expect)
        assert leftover == b"", leftover[:200]
        for index, response in enumerate(responses):
            answered = sends[index] if index < len(sends) else None
            if kind == "mutated":
                check_shape(response)
                continue
            check_answer(response, answered)
            if answered is None:
                assert response.status in (400, 408, 413, 431), response.status
        if until_close:
            assert closed, "the server kept a connection it should have closed"
    except (AssertionError, FramingError, ValueError, KeyError) as err:
        sample = stream[:300]
        tally.failures.append(f"{kind}: {type(err).__name__}: {err} -- sent {sample!r}")
        return
    tally.connections += 1
    tally.requests += len(sends) + (1 if tail else 0)
    for index in range(len(responses)):
        if index < len(sends) and kind != "mutated":
            tally.messages += sends[index].path.split("?")[0] == "/v1/messages"
        elif kind == "broken" and tail.startswith(b"POST /v1/messages "):
            tally.messages += 1
        else:
            tally.maybe_messages += 1
    tally.kinds[kind] += 1
    tally.responses.update(r.status for r in responses)


# the test --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzzed() -> Iterator[EmulatorProcess]:
    """A dedicated emulator: quick replies, small limits, short timeouts, a control token
    (so that fuzzed control requests cannot reset or reconfigure it)."""
    with emulator_with_control_token(FUZZ_CONFIG, 11, "fuzz-control-token") as emu:
        yield emu


def stats(emu: EmulatorProcess) -> dict[str, Any]:
    return httpx2.get(f"{emu.base_url}/_emulator/stats", timeout=10).json()


@pytest.mark.slow
def test_fuzz_http_front(fuzzed: EmulatorProcess, record_property: Any) -> None:
    host, port = fuzzed.base_url.removeprefix("http://").split(":")
    address = (host, int(port))
    before = stats(fuzzed)
    tallies = [Tally() for _ in range(THREADS)]
    stop_at = time.monotonic() + SECONDS

    def worker(index: int) -> None:
        rng = random.Random(SEED * 100 + index)
        while time.monotonic() < stop_at and len(tallies[index].failures) < 5:
            one_case(rng, address, tallies[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    failures = [f for t in tallies for f in t.failures]
    assert not failures, "\n".join(failures[:10])
    assert fuzzed.process is not None and fuzzed.process.poll() is None, "the emulator died"
    connections = sum(t.connections for t in tallies)
    requests = sum(t.requests for t in tallies)
    responses: Counter[int] = sum((t.responses for t in tallies), Counter())
    kinds: Counter[str] = sum((t.kinds for t in tallies), Counter())
    record_property("fuzz_inputs", connections)
    record_property("fuzz_requests", requests)
    print(f"\nfuzz: {connections} connections, {requests} requests, {dict(kinds)}, {responses}")
    assert connections >= MIN_CONNECTIONS

    deadline = time.monotonic() + 5
    after = stats(fuzzed)
    calls = 1  # stats calls since the fuzz: all answered but the last, in progress in it
    while (after["totals"]["in_flight"] or after["http"]["in_progress"] > 1) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
        after = stats(fuzzed)
        calls += 1
    http = after["http"]
    # every request the server counted: answered (as the clients read it) or this stats call
    assert http["received"] == http_accounted(http) and http["in_progress"] == 1
    assert http["closed"] == before["http"]["closed"]
    counted = Counter({int(k): v for k, v in http["responses"].items()})
    counted.subtract({int(k): v for k, v in before["http"]["responses"].items()})
    counted[200] -= calls  # the stats calls before and after the fuzz (but the last)
    assert +counted == +responses, (counted, responses)
    assert http["received"] - before["http"]["received"] == sum(responses.values()) + calls
    totals = after["totals"]
    assert totals["in_flight"] == 0 and totals["received"] == accounted(totals)
    messages = sum(t.messages for t in tallies)
    maybe = sum(t.maybe_messages for t in tallies)
    assert messages <= totals["received"] - before["totals"]["received"] <= messages + maybe
    assert totals["completed"] > connections // 10  # streams and replies were exercised
    stderr = fuzzed.stderr_text()
    assert "Traceback" not in stderr and "emulator bug" not in stderr, stderr[-3000:]
