"""``loadkit emulator --processes 2``: two worker processes on one port behave as one emulator.

Driven through the real anthropic SDK, one client (so one new TCP connection, which the
kernel hands to either worker) per request; ``/_emulator/stats`` lists each worker's own
totals under ``processes``, which tells where requests landed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .runs import run_locust

MODEL = "claude-haiku-4-5"
QUICK = {"ttft_base_ms": 20, "decode_tokens_per_s": 2000, "ttft_jitter": 0.0, "decode_jitter": 0.0}
CONFIG: dict[str, Any] = {
    "models": {m: QUICK for m in ("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-6")},
    "output_tokens": {"kind": "fixed", "value": 12},
}
GONE_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(config=CONFIG, processes=2) as emu:
        yield emu


@pytest.fixture
def fresh(emulator: EmulatorProcess) -> EmulatorProcess:
    reset = httpx2.post(f"{emulator.base_url}/_emulator/reset", timeout=10)
    assert reset.status_code == 200, reset.text
    return emulator


def stats(emulator: EmulatorProcess) -> dict[str, Any]:
    response = httpx2.get(f"{emulator.base_url}/_emulator/stats", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def received(emulator: EmulatorProcess) -> list[int]:
    """Messages requests each worker has received."""
    return [p["totals"]["received"] for p in stats(emulator)["processes"]]


def ask(emulator: EmulatorProcess, **body: Any) -> Any:
    """One request on a new connection; the SDK's response (with headers) or its error."""
    with anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0) as client:
        body.setdefault("model", MODEL)
        body.setdefault("max_tokens", 50)
        body.setdefault("messages", [{"role": "user", "content": "hello"}])
        try:
            return client.messages.with_raw_response.create(**body)
        except anthropic.APIStatusError as err:
            return err


def test_requests_land_on_both_processes_and_stats_and_served_are_their_sum(
    fresh: EmulatorProcess,
) -> None:
    answers = [ask(fresh) for _ in range(16)]
    ids = {a.headers["request-id"] for a in answers}
    assert all(a.status_code == 200 for a in answers)
    merged = stats(fresh)
    per_process = merged["processes"]
    assert len(per_process) == 2 and len({p["pid"] for p in per_process}) == 2
    # With 16 connections, one worker getting all of them has odds of 2 ** -15.
    assert all(p["totals"]["received"] > 0 for p in per_process), per_process
    for name, value in merged["totals"].items():
        assert value == sum(p["totals"][name] for p in per_process), name
    assert merged["totals"]["received"] == merged["totals"]["completed"] == 16
    assert merged["totals"]["output_tokens"] == 16 * 12
    assert merged["first_token_lateness_ms"]["count"] == 16
    assert merged["connections_opened"] == sum(p["connections_opened"] for p in per_process)
    http = merged["http"]  # every request on any path: the 16, the reset, this GET
    assert http["received"] == sum(p["http"]["received"] for p in per_process) >= 18
    assert (
        http["received"] == http["in_progress"] + sum(http["responses"].values()) + http["closed"]
    )
    served = httpx2.get(f"{fresh.base_url}/_emulator/served", timeout=10)
    records = served.json()
    assert served.headers["x-emulator-served-total"] == "16"
    assert {r["request_id"] for r in records} == ids
    assert [r["arrived_ns"] for r in records] == sorted(r["arrived_ns"] for r in records)
    page = httpx2.get(f"{fresh.base_url}/_emulator/served?offset=5&limit=4", timeout=10).json()
    assert page == records[5:9]
    for request_id in ids:  # each found, whichever worker served it and whichever answers
        one = httpx2.get(f"{fresh.base_url}/_emulator/served?request_id={request_id}").json()
        assert [r["request_id"] for r in one] == [request_id]


def test_a_request_rate_limit_holds_across_processes() -> None:
    """Rate limits are the organization's, one limit however many servers answer: "We use the
    token bucket algorithm to do rate limiting. This means that your capacity is continuously
    replenished up to your maximum limit" (platform.claude.com/docs/en/api/rate-limits, "About
    our limits", as of 2026-11). A limit of 6 requests per minute admits exactly 6 of a burst
    of 14 whichever worker each lands on (split buckets would admit up to 12; the refill in
    the burst's second or so is 0.1 of a request)."""
    config = {
        **CONFIG,
        "rate_limits": {
            "haiku": {"requests_per_minute": 6},
            "sonnet": {"requests_per_minute": 1000},
            "opus": {"requests_per_minute": 1000},
        },
    }
    with EmulatorProcess(config=config, processes=2) as emulator:
        answers = [ask(emulator) for _ in range(14)]
        per_process = stats(emulator)["processes"]
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 6 and statuses.count(429) == 8, statuses
    assert statuses[:6] == [200] * 6
    assert all(p["totals"]["received"] > 0 for p in per_process), per_process
    assert sum(p["totals"]["rate_limited"] for p in per_process) == 8
    remaining = [int(a.headers["anthropic-ratelimit-requests-remaining"]) for a in answers[:6]]
    assert remaining == [5, 4, 3, 2, 1, 0]


def test_a_prompt_written_to_the_cache_by_one_process_is_read_by_the_other(
    fresh: EmulatorProcess,
) -> None:
    """ "A cache entry only becomes available after the first response begins" (prompt caching
    page, platform.claude.com/docs/en/build-with-claude/prompt-caching, "Caching with
    concurrent requests", as of 2026-11): once the writing request has answered, the same
    prefix is a hit on every worker, not only on the one that wrote it."""
    system = [{"type": "text", "text": "s" * 4 * 5000, "cache_control": {"type": "ephemeral"}}]
    before = received(fresh)
    first = ask(fresh, model="claude-opus-4-6", system=system)
    writer = [a - b for a, b in zip(received(fresh), before, strict=True)].index(1)
    written = first.parse().usage.cache_creation_input_tokens
    assert written > 5000
    for _ in range(40):  # each lands on the other worker with odds 1/2
        before = received(fresh)
        again = ask(fresh, model="claude-opus-4-6", system=system)
        landed = [a - b for a, b in zip(received(fresh), before, strict=True)].index(1)
        usage = again.parse().usage
        assert usage.cache_read_input_tokens == written, landed
        assert usage.cache_creation_input_tokens == 0
        if landed != writer:
            break
    else:
        pytest.fail("no request landed on the other worker in 40 connections")


def test_config_and_reset_reach_every_process(fresh: EmulatorProcess) -> None:
    patch = {"output_tokens": {"kind": "fixed", "value": 7}}
    try:
        posted = httpx2.post(f"{fresh.base_url}/_emulator/config", json=patch, timeout=10)
        assert posted.status_code == 200, posted.text
        assert posted.json()["output_tokens"] == {"kind": "fixed", "value": 7}
        answers = [ask(fresh) for _ in range(12)]
        assert [a.parse().usage.output_tokens for a in answers] == [7] * 12
        assert all(count > 0 for count in received(fresh))
        bad = httpx2.post(
            f"{fresh.base_url}/_emulator/config", json={"output_tokens": 3}, timeout=10
        )
        assert bad.status_code == 400 and "output_tokens" in bad.json()["error"]["message"]
        for _ in range(4):  # any worker answers GET config with the one config
            config = httpx2.get(f"{fresh.base_url}/_emulator/config", timeout=10).json()
            assert config["output_tokens"] == {"kind": "fixed", "value": 7}
    finally:
        httpx2.post(f"{fresh.base_url}/_emulator/config", json=CONFIG, timeout=10)
    reset = httpx2.post(f"{fresh.base_url}/_emulator/reset", timeout=10)
    assert reset.status_code == 200
    after = stats(fresh)
    assert after["totals"]["received"] == 0
    assert [p["totals"]["received"] for p in after["processes"]] == [0, 0]
    assert httpx2.get(f"{fresh.base_url}/_emulator/served").json() == []


def test_control_token_guards_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADKIT_EMULATOR_CONTROL_TOKEN", "tok-123")
    with EmulatorProcess(config=CONFIG, processes=2) as emulator:
        for _ in range(6):  # new connections: both workers refuse
            refused = httpx2.post(f"{emulator.base_url}/_emulator/reset", timeout=10)
            assert refused.status_code == 401
        allowed = httpx2.post(
            f"{emulator.base_url}/_emulator/reset",
            headers={"authorization": "Bearer tok-123"},
            timeout=10,
        )
        assert allowed.status_code == 200
        assert "tok-123" not in emulator.stderr_text()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_workers_die_with_their_supervisor_and_a_dead_worker_stops_the_emulator() -> None:
    with EmulatorProcess(config=CONFIG, processes=2) as emulator:
        assert emulator.process is not None
        workers = [p["pid"] for p in stats(emulator)["processes"]]
        os.kill(workers[1], signal.SIGKILL)
        code = emulator.process.wait(timeout=GONE_WITHIN_S + 10)
        assert code == 1
        assert f"worker 1 (pid {workers[1]}) exited with status signal 9" in (
            emulator.stderr_text()
        )
        assert wait_gone(workers) == []
    # The supervisor killed outright: its workers follow it (parent-death signal).
    command = [sys.executable, "-m", "loadkit", "emulator", "--port", "0", "--processes", "2"]
    supervisor = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout is not None
        url = supervisor.stdout.readline().split("listening on ")[1].strip()
        workers = [p["pid"] for p in httpx2.get(f"{url}/_emulator/stats").json()["processes"]]
        supervisor.kill()
        supervisor.wait()
        assert wait_gone(workers) == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        if supervisor.stdout is not None:
            supervisor.stdout.close()


@pytest.mark.slow
@pytest.mark.timing
def test_a_distributed_locust_run_against_two_processes_reconciles_exactly(
    tmp_path: Path,
) -> None:
    """Four Locust workers against a two-process emulator: what the harness sent equals what
    the emulator (both processes, merged) received, outcome by outcome."""
    with EmulatorProcess(config=CONFIG, processes=2) as emulator:
        result, data = run_locust(
            tmp_path, "-u", "16", "-r", "16", "-t", "3s", "--processes", "4",
            "--workload", "workloads/ci.yaml", "--target-url", emulator.base_url,
            env={"ANTHROPIC_API_KEY": "test-key"},
        )  # fmt: skip
        deadline = time.monotonic() + 5
        merged = stats(emulator)
        while merged["totals"]["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.1)
            merged = stats(emulator)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    accounting = data["accounting"]
    assert accounting["mismatches"] == []
    assert accounting["emulator_received"] == merged["totals"]["received"]
    assert accounting["harness_sent"] == merged["totals"]["received"] > 50
    assert all(p["totals"]["received"] > 0 for p in merged["processes"])
