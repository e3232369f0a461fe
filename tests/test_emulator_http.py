"""The emulator at the HTTP level: auth, errors, the SSE wire format, accounting."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import anthropic
import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess
from loadkit.emulator.stats import OUTCOMES

from .conftest import Control

HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
BODY: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}


def post(emulator: EmulatorProcess, body: Any, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(f"{emulator.base_url}/v1/messages", json=body, headers=headers, timeout=10)


def test_auth_accepts_both_headers_and_rejects_none(
    emulator: EmulatorProcess, control: Control
) -> None:
    assert post(emulator, BODY, {**HEADERS, "x-api-key": "k"}).status_code == 200
    assert post(emulator, BODY, {**HEADERS, "authorization": "Bearer k"}).status_code == 200
    missing = post(emulator, BODY, HEADERS)
    assert missing.status_code == 401
    body = missing.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["request_id"] == missing.headers["request-id"]
    no_version = post(emulator, BODY, {"x-api-key": "k"})
    assert no_version.status_code == 400 and "anthropic-version" in no_version.text
    row = control.row("unknown", "standard")
    assert row["unauthorized"] == 1 and row["invalid"] == 1


def test_only_configured_keys(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"api_keys": ["good"]}).raise_for_status()
    assert post(emulator, BODY, {**HEADERS, "x-api-key": "good"}).status_code == 200
    bad = post(emulator, BODY, {**HEADERS, "x-api-key": "bad"})
    assert bad.status_code == 401
    assert "bad" not in bad.text  # the key is never echoed


@pytest.mark.parametrize(
    ("patch", "status", "message"),
    [
        ({"max_tokens": None}, 400, "max_tokens: Field required"),
        ({"max_tokens": 0}, 400, "max_tokens: Input should be an integer"),
        ({"messages": []}, 400, "messages: must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, 400, "messages.0.content: Field required"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            400,
            "messages.0.content.0.text",
        ),
        ({"model": "claude-nonexistent"}, 404, "model: claude-nonexistent"),
        ({"temperature": 3}, 400, "temperature"),
        ({"stream": "yes"}, 400, "stream: Input should be a valid boolean"),
        ({"speed": "warp"}, 400, "speed: Input should be"),
        (
            {"system": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]},
            400,
            "system.0.cache_control",
        ),
    ],
)
def test_malformed_requests_name_the_field(
    emulator: EmulatorProcess, control: Control, patch: dict[str, Any], status: int, message: str
) -> None:
    body = {**BODY, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    response = post(emulator, body, {**HEADERS, "x-api-key": "k"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert message in error["message"]


def test_invalid_json_body(emulator: EmulatorProcess, control: Control) -> None:
    response = httpx2.post(
        f"{emulator.base_url}/v1/messages",
        content=b"{not json",
        headers={**HEADERS, "x-api-key": "k"},
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_sse_wire_format(emulator: EmulatorProcess, control: Control) -> None:
    with httpx2.stream(
        "POST",
        f"{emulator.base_url}/v1/messages",
        json={**BODY, "stream": True},
        headers={**HEADERS, "x-api-key": "k"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        raw = b"".join(response.iter_raw()).decode()
    blocks = [b for b in raw.split("\n\n") if b]
    names = [b.split("\n")[0] for b in blocks]
    assert all(n.startswith("event: ") for n in names)  # the SDK drops events without one
    assert names[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    assert names[-1] == "event: message_stop"
    assert all(b.split("\n")[1].startswith("data: {") for b in blocks)


def test_non_api_paths(emulator: EmulatorProcess, control: Control) -> None:
    response = httpx2.get(f"{emulator.base_url}/v2/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    wrong_method = httpx2.get(f"{emulator.base_url}/v1/messages")
    assert wrong_method.status_code == 405


def test_config_endpoint_rejects_bad_values(emulator: EmulatorProcess, control: Control) -> None:
    response = control.configure({"faults": {"api_error_rate": 2}})
    assert response.status_code == 400
    assert "faults.api_error_rate" in response.json()["error"]["message"]
    current = control.http.get("/_emulator/config").json()
    assert current["faults"]["api_error_rate"] == 0


@pytest.mark.timing
def test_served_ground_truth(emulator: EmulatorProcess, control: Control) -> None:
    control.configure(
        {"models": {"claude-haiku-4-5": {"ttft_jitter": 0.3, "decode_jitter": 0.2}}}
    ).raise_for_status()
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url)
    for _ in range(3):
        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=30, messages=BODY["messages"]
        ) as s:
            sent = time.perf_counter()
            planned = float(s.response.headers["x-emulator-ttft-ms"])
            otps = float(s.response.headers["x-emulator-otps"])
            s.get_final_message()
        request_id = s.response.headers["request-id"]
        served = control.served(request_id)
        assert served["outcome"] == "completed" and served["output_tokens"] == 20
        assert served["planned_ttft_ms"] == pytest.approx(planned, abs=0.01)
        assert served["decode_tokens_per_s"] == pytest.approx(otps, rel=1e-3)
        # against the served plan at full precision (the header rounds to 0.01 ms)
        assert 0 <= served["actual_ttft_ms"] - served["planned_ttft_ms"] < 5
        assert time.perf_counter() > sent


def _accounted(totals: dict[str, int]) -> int:
    return sum(totals[o] for o in OUTCOMES) + totals["in_flight"]


def _run_streams(emulator: EmulatorProcess, count: int, abandon_every: int) -> list[str]:
    async def one(client: anthropic.AsyncAnthropic, index: int) -> str:
        try:
            async with client.messages.stream(
                model="claude-haiku-4-5", max_tokens=50, messages=BODY["messages"]
            ) as s:
                async for _ in s.text_stream:
                    if abandon_every and index % abandon_every == 0:
                        return "abandoned"  # leaves mid-stream: the emulator sees a disconnect
                await s.get_final_message()
            return "ok"
        except anthropic.APIStatusError as err:
            return f"status {err.status_code}"
        except (anthropic.APIConnectionError, httpx2.TransportError):
            return "transport"

    async def run() -> list[str]:
        client = anthropic.AsyncAnthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
        results = await asyncio.gather(*(one(client, i) for i in range(count)))
        await client.close()
        return results

    return asyncio.run(run())


def _settled_totals(control: Control) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while control.stats()["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return control.stats()["totals"]


def test_every_request_accounted_under_faults(emulator: EmulatorProcess, control: Control) -> None:
    control.configure(
        {
            "faults": {
                "api_error_rate": 0.1,
                "overloaded_rate": 0.1,
                "midstream_error_rate": 0.1,
                "connection_cut_rate": 0.1,
            },
            "rate_limits": {"haiku": {"requests_per_minute": 600}},
            "models": {"claude-haiku-4-5": {"max_concurrent_streams": 20, "max_queue": 20}},
        }
    ).raise_for_status()
    results = _run_streams(emulator, 80, abandon_every=0)
    totals = _settled_totals(control)
    assert totals["received"] == 80 == _accounted(totals)
    assert totals["completed"] == results.count("ok")
    assert totals["midstream_error"] == results.count("status 200")
    assert totals["api_error"] == results.count("status 500")
    assert totals["overloaded"] == results.count("status 529")
    assert totals["rate_limited"] == results.count("status 429")
    assert totals["cut"] == results.count("transport")
    assert min(totals[k] for k in ("api_error", "overloaded", "midstream_error", "cut")) > 0


def test_client_disconnect_mid_stream_is_counted(
    emulator: EmulatorProcess, control: Control
) -> None:
    control.configure({"models": {"claude-haiku-4-5": {"decode_tokens_per_s": 40}}})
    results = _run_streams(emulator, 30, abandon_every=3)
    totals = _settled_totals(control)
    assert totals["received"] == 30 == _accounted(totals)
    assert totals["client_closed"] == results.count("abandoned") == 10
    assert totals["completed"] == results.count("ok") == 20


def test_client_disconnect_while_queued_is_counted(
    emulator: EmulatorProcess, control: Control
) -> None:
    control.configure(
        {"models": {"claude-haiku-4-5": {"max_concurrent_streams": 1, "decode_tokens_per_s": 20}}}
    ).raise_for_status()
    payload = (
        b'{"model":"claude-haiku-4-5","max_tokens":20,"stream":true,'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    host, port = emulator.base_url.removeprefix("http://").split(":")
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    sockets = [socket.create_connection((host, int(port))) for _ in range(2)]
    for sock in sockets:
        sock.sendall(request)
    time.sleep(0.2)
    assert control.row("claude-haiku-4-5", "standard")["queued"] == 1
    for sock in sockets:
        sock.close()
    time.sleep(0.2)
    row = control.row("claude-haiku-4-5", "standard")
    assert row["client_closed"] == 2 and row["in_flight"] == 0 and row["queued"] == 0
