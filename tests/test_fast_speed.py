"""Fast mode's speed-up is a distribution, not a constant, driven through the real SDK.

The fast mode page (platform.claude.com/docs/en/build-with-claude/fast-mode, "How fast mode
works", as of 2026-11) promises "up to 2.5x higher output tokens per second compared to
standard speed", with no change to time to first token. The emulator draws each fast
request's speed-up from a configured mean and spread; ``/_emulator/served`` records the
decode rate each request was given.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import anthropic

from loadkit.emulator.config import ModelProfile
from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

FAST_BETA = "fast-mode-2026-02-01"
BASE_DECODE = 400.0
REQUESTS = 300


def _fast_speedups(
    emulator: EmulatorProcess, control: Control, speedup: dict[str, Any], count: int = REQUESTS
) -> list[float]:
    """``count`` one-token fast requests at once; each one's served decode rate over the
    standard rate (decode jitter off, so the ratio is the drawn speed-up)."""
    profile = {"ttft_base_ms": 0, "decode_tokens_per_s": BASE_DECODE, "decode_jitter": 0.0}
    patch = {
        "models": {"claude-opus-4-6": {**profile, **speedup}},
        "output_tokens": {"kind": "fixed", "value": 1},
        "fast_mode": {"input_tokens_per_minute": None, "output_tokens_per_minute": None},
    }
    control.configure(patch).raise_for_status()

    async def send_all() -> None:
        client = anthropic.AsyncAnthropic(
            api_key="test-key", base_url=emulator.base_url, max_retries=0
        )
        async with client:
            await asyncio.gather(
                *(
                    client.beta.messages.create(
                        model="claude-opus-4-6",
                        max_tokens=5,
                        speed="fast",
                        betas=[FAST_BETA],
                        messages=[{"role": "user", "content": "hi"}],
                    )
                    for _ in range(count)
                )
            )

    asyncio.run(send_all())
    served = control.http.get("/_emulator/served").json()
    rates = [s["decode_tokens_per_s"] for s in served if s["speed"] == "fast"]
    assert len(rates) == count
    return [rate / BASE_DECODE for rate in rates]


def test_speedup_follows_the_configured_mean_and_spread(
    emulator: EmulatorProcess, control: Control
) -> None:
    """A mean of 1.8 and a spread of 0.3 (bounds far away): the served speed-ups average
    1.8 and spread 0.3, within sampling error (4 standard errors), and differ per request."""
    speedups = _fast_speedups(
        emulator,
        control,
        {
            "fast_decode_multiplier": 1.8,
            "fast_decode_spread": 0.3,
            "fast_decode_min": 0.5,
            "fast_decode_max": 3.5,
        },
    )
    mean, spread = statistics.fmean(speedups), statistics.stdev(speedups)
    assert abs(mean - 1.8) < 4 * 0.3 / REQUESTS**0.5, mean
    assert abs(spread - 0.3) < 4 * 0.3 / (2 * REQUESTS) ** 0.5, spread
    assert len(set(speedups)) > REQUESTS * 0.9


def test_default_speedup_is_up_to_2_5x(emulator: EmulatorProcess, control: Control) -> None:
    """The shipped defaults: every speed-up at most 2.5x ("Up to 2.5x higher output tokens
    per second compared to standard speed", fast mode page, "How fast mode works") and at
    least 1x,
    spread around the default mean; the default mean below 2.5 is loadkit's assumption."""
    defaults = ModelProfile.model_fields
    speedup = {
        name: defaults[name].default
        for name in (
            "fast_decode_multiplier",
            "fast_decode_spread",
            "fast_decode_min",
            "fast_decode_max",
        )
    }
    assert speedup["fast_decode_max"] == 2.5 and speedup["fast_decode_spread"] > 0
    speedups = _fast_speedups(emulator, control, speedup)
    assert max(speedups) <= 2.5 + 1e-9 and min(speedups) >= 1.0 - 1e-9
    assert statistics.stdev(speedups) > 0.1
    mean = speedup["fast_decode_multiplier"]
    assert (
        abs(statistics.fmean(speedups) - mean) < 4 * speedup["fast_decode_spread"] / REQUESTS**0.5
    )


def test_zero_spread_is_a_constant_and_bad_ranges_are_refused(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Spread 0 gives every request the mean (the constant 2.5x of earlier versions, the
    fast mode page's "up to 2.5x" taken as exact); a mean outside [min, max] is refused
    naming the fields (docs/emulator-config.yaml)."""
    constant = {"fast_decode_multiplier": 2.5, "fast_decode_spread": 0.0, "fast_decode_max": 2.5}
    assert set(_fast_speedups(emulator, control, constant, count=30)) == {2.5}
    refused = control.configure({"models": {"claude-opus-4-6": {"fast_decode_multiplier": 3.0}}})
    assert refused.status_code == 400
    assert "fast_decode_multiplier" in refused.text and "fast_decode_max" in refused.text
