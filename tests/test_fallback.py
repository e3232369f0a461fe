"""Fallback policies: the core object against the emulator, and the validation scenario."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.client import RequestSpec, StreamingClient
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.fallback import FallbackPolicy, FallbackSettings
from loadkit.fallback_checks import record_violations
from loadkit.record import Attempt, Outcome, ResultRecord

from .conftest import Control
from .runs import run_locust

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "hello"}]
# 1,202 tokens: just over the 1,200-token bucket, so the next small request waits ~0.5 s.
BIG = [{"role": "user", "content": "abcd" * 1195}]


def fast(messages: list[dict[str, Any]] = HELLO) -> RequestSpec:
    return RequestSpec("claude-opus-4-6", "fast", 20, messages)


@pytest.fixture()
def client(emulator: EmulatorProcess) -> Any:
    c = StreamingClient(emulator.base_url, "test-key")
    yield c
    c.close()


def exhaust_fast(control: Control, client: StreamingClient) -> None:
    """A fast limit of 1,200 input tokens/minute, used up by one big request."""
    control.reset()  # full buckets
    control.configure({"fast_mode": {"input_tokens_per_minute": 1200}}).raise_for_status()
    assert client.send(fast(BIG), max_retries=0).ok


def test_none_fails_on_429(client: StreamingClient, control: Control) -> None:
    exhaust_fast(control, client)
    policy = FallbackPolicy(client, FallbackSettings(policy="none"))
    record = policy.send(fast())
    assert record.outcome is Outcome.RATE_LIMITED and len(record.attempts) == 1
    assert record_violations(record, policy.settings) == []


def test_standard_falls_back_once_and_is_served_standard(
    client: StreamingClient, control: Control
) -> None:
    exhaust_fast(control, client)
    policy = FallbackPolicy(client, FallbackSettings(policy="standard"))
    record = policy.send(fast())
    assert record.ok and record.fell_back and record.served_speed == "standard"
    assert [(a.speed, a.status) for a in record.attempts] == [("fast", 429), ("standard", 200)]
    assert record.fallback_delay_ms is not None and record.fallback_delay_ms >= 0
    assert record.ttft_ms is not None and record.ttft_ms > record.attempts[1].ttft_ms  # type: ignore[operator]
    assert record_violations(record, policy.settings) == []
    assert control.row("claude-opus-4-6", "fast")["rate_limited"] == 1
    assert control.row("claude-opus-4-6", "standard")["completed"] == 1


def test_standard_reports_the_prompt_cache_it_lost(
    client: StreamingClient, control: Control
) -> None:
    system = [{"type": "text", "text": "wxyz" * 5000, "cache_control": {"type": "ephemeral"}}]
    policy = FallbackPolicy(client, FallbackSettings(policy="standard"))
    spec = RequestSpec("claude-opus-4-6", "fast", 20, HELLO, system=system)
    policy.send(spec)
    warm = policy.send(spec)
    assert warm.cache_read_input_tokens > 5000 and not warm.fell_back
    exhaust_fast(control, client)
    record = policy.send(spec)
    assert record.fell_back and record.cache_read_input_tokens == 0
    assert record.cache_creation_input_tokens > 5000  # the standard cache was cold
    assert record.cache_tokens_lost == warm.cache_read_input_tokens


def test_retry_waits_retry_after(client: StreamingClient, control: Control) -> None:
    exhaust_fast(control, client)
    policy = FallbackPolicy(client, FallbackSettings(policy="retry", max_retries=4))
    record = policy.send(fast())
    assert record.ok and not record.fell_back and record.served_speed == "fast"
    assert record.attempts[0].status == 429 and len(record.attempts) >= 2
    assert record.attempts[1].waited_s >= (record.attempts[0].retry_after_s or 0)
    assert record_violations(record, policy.settings) == []


def test_retry_then_standard_waits_only_for_short_retry_after(
    client: StreamingClient, control: Control
) -> None:
    exhaust_fast(control, client)  # retry-after ~0.5 s
    waits = FallbackPolicy(
        client, FallbackSettings(policy="retry-then-standard", max_wait_s=5, max_retries=4)
    )
    record = waits.send(fast())
    assert record.ok and record.served_speed == "fast" and not record.fell_back
    assert record_violations(record, waits.settings) == []
    exhaust_fast(control, client)
    impatient = FallbackPolicy(
        client, FallbackSettings(policy="retry-then-standard", max_wait_s=0.01)
    )
    record = impatient.send(fast())
    assert record.fell_back and record.served_speed == "standard" and len(record.attempts) == 2


def test_transient_errors_are_reissued_with_default_retries(
    client: StreamingClient, control: Control
) -> None:
    control.configure({"faults": {"overloaded_rate": 1.0}}).raise_for_status()
    policy = FallbackPolicy(client, FallbackSettings(policy="standard", max_retries=1, reissues=2))
    record = policy.send(fast())
    # 1 fast attempt without retries, then 2 re-issues of 1 + 1 retry each
    assert record.outcome is Outcome.OVERLOADED and len(record.attempts) == 5
    assert not record.fell_back and {a.speed for a in record.attempts} == {"fast"}
    assert control.row("claude-opus-4-6", "fast")["overloaded"] == 5


def test_midstream_errors_are_not_reissued(client: StreamingClient, control: Control) -> None:
    control.configure({"faults": {"midstream_error_rate": 1.0}}).raise_for_status()
    policy = FallbackPolicy(client, FallbackSettings(policy="standard"))
    record = policy.send(fast())
    assert record.outcome is Outcome.STREAM_ERROR and len(record.attempts) == 1


def test_checks_catch_a_policy_that_ignores_retry_after() -> None:
    record = ResultRecord("claude-opus-4-6", "fast", "t", 0, 10)
    record.attempts = [
        Attempt("fast", 1, status=429, retry_after_s=0.5),
        Attempt("fast", 2, status=200, waited_s=0.01),
    ]
    record.served_speed = "fast"
    assert record_violations(record, FallbackSettings(policy="retry")) == [
        "retry sooner than retry-after"
    ]
    record.attempts[1].speed = "fast"
    problems = record_violations(record, FallbackSettings(policy="standard"))
    assert problems == ["fast 429 not followed by a standard attempt"]


def scenario(
    tmp_path: Path,
    policy: str,
    locustfile: str = "locustfiles/fast_fallback.py",
    emulator_config: str = "workloads/emulator/fast-fallback.yaml",
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """200 users on a fast-mode limit far below their demand for 5 s; then the limit is
    lifted, and after a 2 s grace no fast 429 may follow while traffic goes on for 3 s."""
    result, data = run_locust(
        tmp_path, "-u", "200", "-r", "200", "-t", "10s",
        "--workload", "workloads/fast-fallback.yaml", "--emulator-config", emulator_config,
        "--fallback", policy, "--recover-at", "5", "--storm-grace", "2",
        locustfile=locustfile, summary=f"{policy}.json",
    )  # fmt: skip
    assert data is not None, result.stderr[-3000:]
    return result, data


@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.parametrize("policy", ["none", "retry", "standard", "retry-then-standard"])
def test_validation_scenario_at_200_users(tmp_path: Path, policy: str) -> None:
    result, data = scenario(tmp_path, policy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert data["breaches"] == []
    assert data["accounting"]["mismatches"] == []
    assert data["validation"]["fast_429_attempts"] > 50  # the limit was really hit
    total = data["total"]
    # The shipped emulator config answers the -u 200 -r 200 jump with acceleration 429s too
    # (rate limits page, "Rate limits": "a sharp increase in usage"), with whole-second
    # retry-after; every 429 is told by its limit, and the fast-limit ones are counted apart.
    causes = total["responses_429_by_cause"]
    assert sum(causes.values()) == total["responses_429"]
    assert causes.get("fast/acceleration", 0) + causes.get("standard/acceleration", 0) > 0
    fast_limit = causes.get("fast/fast_input_tokens", 0) + causes.get("fast/fast_output_tokens", 0)
    assert fast_limit == data["validation"]["fast_429_attempts"]
    assert "PASS 429s told apart" in result.stderr
    assert "429 answers by limit (attempt speed/limit): " in result.stderr + result.stdout
    fallback = total["fallback"]
    if policy == "standard":
        assert fallback["fell_back"] == total["attempt_outcomes"].get("standard/ok", 0) > 0
        assert fallback["cache_tokens_lost"] > 0
    if policy == "none":
        assert total["outcomes"]["rate_limited"] > 0 and fallback["fell_back"] == 0
    if policy == "retry":
        assert fallback["wait_s"] > 0 and fallback["fell_back"] == 0
    assert data["policy"]["amplification"] <= data["policy"]["amplification_bound"]


@pytest.mark.slow
@pytest.mark.timing
def test_validation_scenario_catches_a_wrong_policy(tmp_path: Path) -> None:
    # The shipped config's whole-second retry-after (as the API sends it, acceleration 429s
    # included): an immediate retry is plainly too soon.
    config = yaml.safe_load((ROOT / "workloads/emulator/fast-fallback.yaml").read_text())
    assert "fractional_retry_after" not in config and config["acceleration_limit"]
    result, data = scenario(tmp_path, "retry", "tests/locustfiles/impatient_retry.py")
    assert result.returncode == 3
    assert any("retry sooner than retry-after" in line for line in data["breaches"])
    assert "BREACH: policy retry followed: retry sooner than retry-after" in result.stderr
    assert "FAIL policy retry followed: retry sooner than retry-after" in result.stderr
