"""The acceleration limit, through the SDK: 429s for a sharp increase in usage, below every
per-minute limit.

The rate limits page (platform.claude.com/docs/en/api/rate-limits, "Rate limits", as of
2026-11): "You might also encounter 429 errors due to acceleration limits on the API if your
organization has a sharp increase in usage. To avoid hitting acceleration limits, ramp up your
traffic gradually and maintain consistent usage patterns." A 429 comes "along with a
retry-after header indicating how long to wait". The page gives no numbers: loadkit's model
and its defaults are in docs/emulator-config.yaml (``acceleration_limit``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx2
import pytest

from loadkit.client import RequestSpec, StreamingClient
from loadkit.emulator.config import EmulatorConfig
from loadkit.emulator.launcher import EmulatorProcess

from .conftest import QUICK_MODELS, Control

HELLO = [{"role": "user", "content": "hello"}]
# An allowance of 10 requests/s holding 1 s of it, that hardly grows with use (a day's window).
STEADY = {"initial_requests_per_minute": 600, "growth": 1, "window_s": 86400, "burst_s": 1}


def _burst(base_url: str, n: int) -> list[Any]:
    """``n`` requests at once, no retries: each one's status and its 429's headers/body."""
    client = anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0)

    def one(_: int) -> Any:
        try:
            client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
            return 200
        except anthropic.RateLimitError as err:
            return err

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_acceleration_limit_is_on_by_default() -> None:
    """Production has it (rate limits page, "Rate limits": "You might also encounter 429
    errors due to acceleration limits"): so has the emulator unless told otherwise."""
    assert EmulatorConfig().acceleration_limit.enabled


def test_a_sudden_burst_gets_429_below_every_per_minute_limit(
    emulator: EmulatorProcess, control: Control
) -> None:
    """A jump from nothing to 40 requests at once, far below 4,000 requests per minute: the
    allowance (10 at once, then 1 a second) lets about 10 through; the rest get 429
    rate_limit_error with a whole-second retry-after, the page's words in the message, and
    rate-limit headers of which none is exhausted (how a client tells these 429s from the
    per-minute ones). Rate limits page, "Rate limits": "a sharp increase in usage"; "Response
    headers": retry-after is "The number of seconds to wait"."""
    slow = {**STEADY, "initial_requests_per_minute": 60, "burst_s": 10}  # 10, then 1 a second
    control.configure(
        {"acceleration_limit": slow, "fractional_retry_after": False}
    ).raise_for_status()
    answers = _burst(emulator.base_url, 40)
    refused = [a for a in answers if a != 200]
    assert 40 - 13 <= len(refused) <= 40 - 10, len(refused)  # (a burst may take 2-3 s here)
    for err in refused:
        assert err.body["error"]["type"] == "rate_limit_error"
        assert "acceleration limits" in err.body["error"]["message"]
        headers = err.response.headers
        assert headers["retry-after"] == "1"
        assert int(headers["anthropic-ratelimit-requests-remaining"]) > 3900
        assert int(headers["anthropic-ratelimit-input-tokens-remaining"]) > 1_000_000
    row = control.row("claude-haiku-4-5", "standard")
    assert row["rate_limited"] == row["acceleration_limited"] == len(refused)


def _instant_replies(control: Control) -> None:
    """Replies in a few ms, so that a paced loop keeps its pace."""
    quick = {"ttft_base_ms": 0, "decode_tokens_per_s": 5000}
    control.configure({"models": {"claude-haiku-4-5": quick}}).raise_for_status()


def _paced(base_url: str, per_s: float, n: int) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0)
    start = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, start + i / per_s - time.monotonic()))
        client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)


def test_a_gradual_ramp_and_a_disabled_limit_pass(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Requests paced under the allowance (16/s against 20/s) all pass ("ramp up your traffic
    gradually and maintain consistent usage patterns", rate limits page, "Rate limits"); with
    the limit disabled a burst of 40 passes whole."""
    _instant_replies(control)
    control.configure(
        {"acceleration_limit": {**STEADY, "initial_requests_per_minute": 1200}}
    ).raise_for_status()
    _paced(emulator.base_url, 16, 16)
    control.configure({"acceleration_limit": {"enabled": False}}).raise_for_status()
    assert _burst(emulator.base_url, 40) == [200] * 40


def test_the_allowance_grows_with_steady_use(emulator: EmulatorProcess, control: Control) -> None:
    """With growth 3 over a 0.5 s window, usage held at the allowance raises it: after 1 s at
    20 requests/s (a recent rate of ~17/s, so an allowance of ~52/s), a burst of 40 passes
    whole, where a fresh allowance holds 20 (a burst beyond it gets 429: the test above).
    "To avoid hitting acceleration limits, ramp up your traffic gradually" (rate limits page,
    "Rate limits")."""
    _instant_replies(control)
    growing = {**STEADY, "initial_requests_per_minute": 1200, "growth": 3, "window_s": 0.5}
    control.configure({"acceleration_limit": growing}).raise_for_status()
    _paced(emulator.base_url, 20, 20)
    assert _burst(emulator.base_url, 40) == [200] * 40


def test_the_harness_names_the_acceleration_limit_as_the_cause(
    emulator: EmulatorProcess, control: Control
) -> None:
    """The harness's client reads the 429's headers once: no limit exhausted, so the cause is
    the acceleration limit; 429s from an exhausted requests limit, and from fast mode's input
    tokens limit, are named so. Rate limits page, "Response headers" (the -remaining of each
    limit); fast mode page (platform.claude.com/docs/en/build-with-claude/fast-mode, "Rate
    limits": the anthropic-fast-* headers)."""
    slow = {**STEADY, "initial_requests_per_minute": 60, "burst_s": 10}  # 10, then 1 a second
    control.configure({"acceleration_limit": slow}).raise_for_status()
    _burst(emulator.base_url, 12)  # the allowance is spent
    client = StreamingClient(emulator.base_url, "k")
    try:
        record = client.send(RequestSpec("claude-haiku-4-5", "standard", 20, HELLO), max_retries=0)
        assert record.attempts[0].status == 429
        assert record.attempts[0].rate_limit_cause == "acceleration"
        control.reset()
        control.configure(
            {
                "acceleration_limit": {"enabled": False},
                "rate_limits": {"haiku": {"requests_per_minute": 1}},
            }
        ).raise_for_status()
        spec = RequestSpec("claude-haiku-4-5", "standard", 20, HELLO)
        assert client.send(spec, max_retries=0).ok
        record = client.send(spec, max_retries=0)
        assert record.attempts[0].rate_limit_cause == "requests"
        control.configure({"fast_mode": {"input_tokens_per_minute": 1200}}).raise_for_status()
        big = [{"role": "user", "content": "abcd" * 1195}]  # 1,202 tokens: all of it
        assert client.send(RequestSpec("claude-opus-4-6", "fast", 20, big), max_retries=0).ok
        record = client.send(RequestSpec("claude-opus-4-6", "fast", 20, HELLO), max_retries=0)
        assert record.attempts[0].rate_limit_cause == "fast_input_tokens"
    finally:
        client.close()


@pytest.mark.slow
def test_the_acceleration_limit_holds_across_processes() -> None:
    """One organisation, one allowance, however many worker processes answer ("if your
    organization has a sharp increase in usage", rate limits page, "Rate limits"): an allowance of
    6 at once (refilling 0.1 a second) admits exactly 6 of 14 requests, each on a new
    connection (so on either worker); split state would admit up to 12."""
    config = {
        "models": {"claude-haiku-4-5": QUICK_MODELS["claude-haiku-4-5"]},
        "output_tokens": {"kind": "fixed", "value": 5},
        "acceleration_limit": {**STEADY, "initial_requests_per_minute": 6, "burst_s": 60},
    }
    with EmulatorProcess(config=config, processes=2) as emu:
        statuses = []
        for _ in range(14):
            client = anthropic.Anthropic(api_key="k", base_url=emu.base_url, max_retries=0)
            try:
                client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
                statuses.append(200)
            except anthropic.RateLimitError:
                statuses.append(429)
            client.close()
        per_process = httpx2.get(f"{emu.base_url}/_emulator/stats", timeout=10).json()
    assert statuses == [200] * 6 + [429] * 8, statuses
    totals = [p["totals"] for p in per_process["processes"]]
    assert all(t["received"] > 0 for t in totals), totals
    assert sum(t["acceleration_limited"] for t in totals) == 8
