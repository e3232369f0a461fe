"""Runs that are interrupted, lose their target or their sink, or are pointed elsewhere:
every output still written and true, the exit code says what happened, the key stays home."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess
from loadkit.record import ResultRecord
from loadkit.sinks.influxdb import InfluxSink, LineFormatter, SinkSettings, rejected_points

from . import runs
from .servers import InfluxDB1

ROOT = Path(__file__).resolve().parent.parent
LONG_STREAMS: dict[str, Any] = {  # streams of ~1 s, so that some are always in flight
    "models": {
        m: {"ttft_base_ms": 50, "decode_tokens_per_s": 200, "ttft_jitter": 0, "decode_jitter": 0}
        for m in ("claude-haiku-4-5", "claude-opus-4-6")
    },
    "output_tokens": {"kind": "fixed", "value": 200},
}
SECRET = "sk-ant-hardening-secret-0123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_locust(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return runs.start_locust(tmp_path, "--workload", "workloads/ci.yaml", *args, env=env)


def received(emulator: EmulatorProcess) -> int:
    return int(httpx2.get(f"{emulator.base_url}/_emulator/stats").json()["totals"]["received"])


def completed(emulator: EmulatorProcess) -> int:
    return int(httpx2.get(f"{emulator.base_url}/_emulator/stats").json()["totals"]["completed"])


def wait_until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_and_every_output_is_final(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C or ``docker stop`` mid-run: the run stops sending, ends its streams, and the
    summary, SLO verdict, JUnit and report come from the final aggregate; accounting covers
    exactly those requests; the exit code says which signal."""
    # 400-token replies at 200 tokens/s: 2 s streams, far longer than the pause Locust's
    # own end takes (its HTML report), so that streams are in flight when the run stops
    # (with 64-token replies all of them could finish during that pause); the signal comes
    # once some have completed, so that the SLO has data.
    workload = tmp_path / "long.yaml"
    workload.write_text(
        "name: long\nmodels: [{model: claude-haiku-4-5}]\n"
        "prompt_tokens: {kind: fixed, value: 100}\nmax_tokens: {kind: fixed, value: 400}\n"
    )
    config = {**LONG_STREAMS, "output_tokens": {"kind": "fixed", "value": 400}}
    with EmulatorProcess(config=config, seed=2) as emulator:
        process = start_locust(
            tmp_path, "-u", "20", "-r", "20", "-t", "60s", "--target-url", emulator.base_url,
            "--workload", str(workload),
            "--slo", "error_rate<=1", "--junit", str(tmp_path / "junit.xml"),
            "--report", str(tmp_path / "report.html"), env={"ANTHROPIC_API_KEY": "k"},
        )  # fmt: skip
        wait_until(lambda: completed(emulator) >= 10)
        process.send_signal(sig)
        _, err = process.communicate(timeout=90)
        totals = httpx2.get(f"{emulator.base_url}/_emulator/stats").json()["totals"]
    assert process.returncode == code, err[:6000]
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["interrupted_by"] == sig.name and data["exit_code"] == code, err[-3000:]
    total = data["total"]
    accounting = data["accounting"]
    assert accounting["mismatches"] == [], err[-3000:]
    assert accounting["harness_sent"] == accounting["emulator_received"] == totals["received"]
    assert total["requests"] + total["cancelled"] >= accounting["harness_sent"] >= 20
    assert total["cancelled"] > 0, err  # streams were in flight, and were cut, not lost
    assert (tmp_path / "junit.xml").exists() and (tmp_path / "report.html").exists()
    assert f"interrupted by {sig.name}" in err


@pytest.mark.slow
def test_a_target_that_dies_mid_run_still_gets_every_output(tmp_path: Path) -> None:
    emulator = EmulatorProcess(config=LONG_STREAMS, seed=3)
    emulator.start()
    try:
        process = start_locust(
            tmp_path, "-u", "10", "-r", "10", "-t", "5s", "--target-url", emulator.base_url,
            "--slo", "error_rate<=1", "--junit", str(tmp_path / "junit.xml"),
            "--report", str(tmp_path / "report.html"), env={"ANTHROPIC_API_KEY": "k"},
        )  # fmt: skip
        wait_until(lambda: completed(emulator) >= 10)
    finally:
        emulator.stop()
    _, err = process.communicate(timeout=90)
    assert "Traceback" not in err, err[-3000:]
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["accounting"]["available"] is False
    assert "stopped answering" in data["accounting"]["reason"]
    assert "accounting: unavailable" in err
    assert data["total"]["failures_by_type"]  # the requests after the death failed, counted
    assert (tmp_path / "junit.xml").exists() and (tmp_path / "report.html").exists()


@pytest.mark.slow
def test_a_run_in_which_nothing_completed_fails(tmp_path: Path) -> None:
    """A target that takes longer to answer than the run lasts: all cancelled, exit 5."""
    hanging = {**LONG_STREAMS, "models": {"claude-haiku-4-5": {"ttft_base_ms": 60_000},
                                          "claude-opus-4-6": {"ttft_base_ms": 60_000}}}  # fmt: skip
    with EmulatorProcess(config=hanging) as emulator:
        process = start_locust(
            tmp_path, "-u", "4", "-r", "4", "-t", "2s", "--target-url", emulator.base_url,
            env={"ANTHROPIC_API_KEY": "k"},
        )  # fmt: skip
        _, err = process.communicate(timeout=90)
    assert process.returncode == 5, err[-3000:]
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["total"]["ok"] == 0 and data["total"]["cancelled"] > 0
    assert "exit code 5: no request completed" in err


@pytest.mark.slow
def test_a_sink_that_delivered_nothing_fails_unless_optional(tmp_path: Path) -> None:
    """All points to a dead port: exit 6 (0 with --influxdb-optional); a password in the
    sink's URL is never printed."""
    dead = f"http://loadkit:hunter2-secret@127.0.0.1:{free_port()}"
    runs = []
    for extra, code in (((), 6), (("--influxdb-optional",), 0)):  # side by side: each waits
        folder = tmp_path / str(code)  # out its sink's flush deadline at the end
        folder.mkdir()
        runs.append(
            # (--stop-timeout: the streams in flight at 2 s finish, so some request completed
            # and the exit code is the sink's, not 5: seen on a busy machine, 2 of 2 cut)
            (start_locust(folder, "-u", "2", "-r", "2", "-t", "2s", "--stop-timeout", "30s",
                          "--influxdb-url", dead, *extra), code)
        )  # fmt: skip
    for process, code in runs:
        out, err = process.communicate(timeout=90)
        assert process.returncode == code, err[-3000:]
        assert "hunter2-secret" not in out + err
        assert "***@127.0.0.1" in err
        assert ("the InfluxDB sink delivered nothing" in err) == (code == 6)


def test_points_the_server_refuses_are_counted_dropped_with_its_reason(tmp_path: Path) -> None:
    """A server that refuses a batch (here InfluxDB 1.x, which has no /api/v2/write) is not
    retried forever: its points are dropped, counted, and its answer is the reason.
    (VictoriaMetrics answers 204 and skips bad lines: no non-finite number reaches a line.)"""
    server = InfluxDB1(tmp_path)
    server.start()
    try:
        sink = InfluxSink(
            SinkSettings(url=server.url, token="", org="o", bucket="b", flush_interval_s=0.1),
            LineFormatter("run", "w"),
        )
        sink.add("llm_request,run_id=run good=1i")
        sink.add("llm_request,run_id=run good=2i")
        stats = sink.close()
    finally:
        server.stop()
    assert stats.written == 0 and stats.failed_writes == 0
    assert stats.rejected == 2 and stats.dropped == 2
    assert stats.rejection.startswith("HTTP 404")


def test_a_partial_write_counts_only_the_refused_lines() -> None:
    body = '{"code":"invalid","message":"partial write: unable to parse \'x\': dropped=3"}'
    assert rejected_points(400, body, 10) == 3
    assert rejected_points(400, "bad request", 10) == 10


def test_no_non_finite_number_reaches_a_line() -> None:
    record = ResultRecord("claude-haiku-4-5", "standard", "t", 1, 1)
    record.cost_usd = float("inf")
    line = LineFormatter("run", "w").request_line(record)
    assert "inf" not in line.lower() and "nan" not in line.lower()


class RecordingTarget(http.server.BaseHTTPRequestHandler):
    """A host that is not an emulator: it records the headers of whatever reaches it."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        self.send_response(404)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture()
def recording_target() -> Iterator[str]:
    RecordingTarget.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingTarget)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def web_ui(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    environ.update(env)
    log = open(tmp_path / "locust.log", "w")  # noqa: SIM115 - the process writes it
    process = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", "locustfiles/messages.py",
         "--web-host", "127.0.0.1", "--web-port", str(port)],
        cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx2.get(url, timeout=1).status_code in (200, 401)
        except httpx2.HTTPError:
            return False

    wait_until(up, timeout=90)
    return process, url


@pytest.mark.slow
def test_the_key_never_goes_to_a_host_typed_into_the_form(
    tmp_path: Path, recording_target: str
) -> None:
    process, url = web_ui(tmp_path, {"ANTHROPIC_API_KEY": SECRET})
    try:
        answer = httpx2.post(
            f"{url}/swarm",
            data={"user_count": "2", "spawn_rate": "2", "host": "", "target_url": recording_target,
                  "max_cost_usd": "5", "workload": "workloads/ci.yaml"},
            timeout=30,
        ).json()  # fmt: skip
        time.sleep(1.0)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert answer["success"] is False
    assert "was not chosen at start" in answer["message"]
    assert "--allowed-targets" in answer["message"]
    # The host was asked whether it is an emulator (no key), and nothing else.
    assert all("authorization" not in {k.lower() for k in h} for h in RecordingTarget.seen)
    assert all(SECRET not in json.dumps(h) for h in RecordingTarget.seen)
    assert SECRET not in (tmp_path / "locust.log").read_text()


@pytest.mark.slow
def test_basic_auth_guards_the_whole_web_ui(tmp_path: Path) -> None:
    process, url = web_ui(tmp_path, {"LOADKIT_WEB_AUTH": "ops:s3cret-pass"})
    try:
        assert httpx2.get(url, timeout=10).status_code == 401
        assert httpx2.get(f"{url}/loadkit/llm.csv", timeout=10).status_code == 401
        assert httpx2.post(f"{url}/swarm", data={}, timeout=10).status_code == 401
        assert httpx2.get(url, auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx2.get(url, auth=("ops", "s3cret-pass"), timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "s3cret-pass" not in (tmp_path / "locust.log").read_text()


def sse(usage_json: str) -> bytes:
    events = [
        ("message_start", '{"type":"message_start","message":{"id":"msg_1","type":"message",'
         '"role":"assistant","model":"claude-haiku-4-5","content":[],"stop_reason":null,'
         '"usage":' + usage_json + "}}"),
        ("content_block_start", '{"type":"content_block_start","index":0,'
         '"content_block":{"type":"text","text":""}}'),
        *[("content_block_delta", '{"type":"content_block_delta","index":0,'
           '"delta":{"type":"text_delta","text":"hi "}}')] * 3,
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn"},'
         '"usage":{"output_tokens":3}}'),
        ("message_stop", '{"type":"message_stop"}'),
    ]  # fmt: skip
    return "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events).encode()


class OddUsageTarget(http.server.BaseHTTPRequestHandler):
    """A Messages API look-alike whose usage holds ``usage_json`` (text, sent as it is)."""

    protocol_version = "HTTP/1.1"
    usage_json = '{"input_tokens": 10, "output_tokens": 1}'

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/v1/messages/count_tokens"):
            payload = json.dumps({"input_tokens": max(1, len(body) // 4)}).encode()
            content_type = "application/json"
        else:
            payload, content_type = sse(self.usage_json), "text/event-stream"
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture()
def odd_usage_target() -> Iterator[tuple[str, type[OddUsageTarget]]]:
    handler = type("Handler", (OddUsageTarget,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


@pytest.mark.parametrize(
    ("usage", "shown"),
    [
        ('{"input_tokens": "100", "output_tokens": 1}', "'100'"),
        ('{"input_tokens": 1e400, "output_tokens": 1}', "inf"),
        ('{"input_tokens": -5, "output_tokens": 1}', "-5"),
        ('{"input_tokens": 10, "output_tokens": 1, "speed": "x y=1"}', "'x y=1'"),
        ('{"output_tokens": 1, "cache_creation": {"ephemeral_1h_input_tokens": "9"}}', "'9'"),
        ('{"output_tokens": 1, "cache_creation": [5]}', "[5]"),
    ],
)
def test_odd_usage_is_a_counted_client_error_naming_the_value(
    odd_usage_target: tuple[str, type[OddUsageTarget]], usage: str, shown: str
) -> None:
    from loadkit.client import RequestSpec, StreamingClient
    from loadkit.record import Outcome

    url, handler = odd_usage_target
    handler.usage_json = usage
    client = StreamingClient(url, "k")
    try:
        record = client.send(
            RequestSpec("claude-haiku-4-5", "standard", 10, [{"role": "user", "content": "hi"}])
        )
    finally:
        client.close()
    assert record.outcome is Outcome.CLIENT_ERROR and record.error_type == "bad_usage"
    assert shown in (record.error_message or "")
    assert record.cost_usd == record.cost_usd and record.cost_usd < 1  # finite, not poisoned


@pytest.mark.slow
def test_a_run_against_odd_usage_loses_no_request_and_writes_strict_json(
    tmp_path: Path, odd_usage_target: tuple[str, type[OddUsageTarget]]
) -> None:
    url, handler = odd_usage_target
    handler.usage_json = '{"input_tokens": 1e400, "output_tokens": 1}'
    process = start_locust(
        tmp_path, "-u", "4", "-r", "4", "-t", "3s", "--target-url", url,
        env={"ANTHROPIC_API_KEY": "k"},
    )  # fmt: skip
    _, err = process.communicate(timeout=90)
    text = (tmp_path / "summary.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    total = data["total"]
    assert total["requests"] > 10, err[-3000:]
    assert total["failures_by_type"] == {"client_error: bad_usage": total["requests"]}
    assert process.returncode == 5  # nothing completed: every answer's usage was bad
    assert "Infinity" not in text and "NaN" not in text
