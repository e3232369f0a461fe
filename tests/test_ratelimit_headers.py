"""Rate-limit headers as the rate limits page defines them, read through the SDK.

platform.claude.com/docs/en/api/rate-limits, "Response headers" (as of 2026-11):
``anthropic-ratelimit-tokens-*`` "display the values for the most restrictive limit currently
in effect ... If Workspace limits do not apply, the headers will return the total tokens
remaining, where total is the sum of input and output tokens" (the emulator has no Workspace
limits); ``retry-after`` is "The number of seconds to wait until you can retry the request".
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anthropic
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "hello"}]
PREFIX = "anthropic-ratelimit-"


def _reset_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


def test_tokens_headers_are_the_sum_of_input_and_output(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Input 10,000/min and output 3,000/min: tokens-limit is 13,000 and tokens-remaining
    the sum of both remainders (not the tighter one's values); tokens-reset is when both are
    full again, the later of the two. Rate limits page, "Response headers": "the most
    restrictive limit currently in effect ... the sum of input and output tokens"."""
    control.configure(
        {
            "rate_limits": {
                "opus": {"input_tokens_per_minute": 10_000, "output_tokens_per_minute": 3000}
            }
        }
    ).raise_for_status()
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=2000, messages=[{"role": "user", "content": "x" * 8000}]
    )
    h = raw.headers
    assert int(h[f"{PREFIX}tokens-limit"]) == 13_000
    input_left = int(h[f"{PREFIX}input-tokens-remaining"])
    output_left = int(h[f"{PREFIX}output-tokens-remaining"])
    assert input_left < 10_000 - 1900 and output_left < 3000  # both were charged
    assert int(h[f"{PREFIX}tokens-remaining"]) == input_left + output_left
    later = max(
        _reset_time(h[f"{PREFIX}input-tokens-reset"]),
        _reset_time(h[f"{PREFIX}output-tokens-reset"]),
    )
    assert _reset_time(h[f"{PREFIX}tokens-reset"]) == later


@pytest.mark.slow
def test_the_shipped_fallback_config_sends_whole_second_retry_after() -> None:
    """workloads/emulator/fast-fallback.yaml as shipped (rate limits page, "Response headers":
    retry-after, "The number of seconds to wait"): a fast-mode 429's retry-after is a
    whole number of seconds, at least 1, though the bucket refills in a fraction of one."""
    config = ROOT / "workloads/emulator/fast-fallback.yaml"
    with EmulatorProcess(config_path=config, seed=3) as emu:
        client = anthropic.Anthropic(api_key="k", base_url=emu.base_url, max_retries=0)
        big = [{"role": "user", "content": "y" * 2_000_000}]  # 500,000 of 600,000 tokens/min
        client.beta.messages.create(
            model="claude-opus-4-6", max_tokens=20, messages=big, speed="fast",
            betas=["fast-mode-2026-02-01"],
        )  # fmt: skip
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.beta.messages.create(
                model="claude-opus-4-6", max_tokens=20, messages=big, speed="fast",
                betas=["fast-mode-2026-02-01"],
            )  # fmt: skip
    retry_after = limited.value.response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert int(limited.value.response.headers["anthropic-fast-input-tokens-remaining"]) < 500_000


def test_fractional_retry_after_only_when_asked(
    emulator: EmulatorProcess, control: Control
) -> None:
    """The test config asks for decimals (fractional_retry_after: true); turned off, the
    same 429 says whole seconds, as the rate limits page ("Response headers") defines it."""
    control.configure({"rate_limits": {"haiku": {"requests_per_minute": 1}}}).raise_for_status()
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    assert "." in limited.value.response.headers["retry-after"]
    control.configure({"fractional_retry_after": False}).raise_for_status()
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "60"
