"""Requests over 200K input tokens draw on their own standard-speed rate-limit pool.

The fast mode page (platform.claude.com/docs/en/build-with-claude/fast-mode, "Rate limits", as
of 2026-11): "Unlike standard speed, which has separate limits for <=200K and >200K input
tokens, fast mode uses a single rate limit that covers the full context range." The rate
limits page ("Long context rate limits", its 2025-08 version): "dedicated rate limits apply to
requests exceeding 200K tokens", listed as input and output tokens per minute.

No header name of that pool is documented, so none is invented: a long-context request's
``anthropic-ratelimit-input-tokens-*``, ``-output-tokens-*`` and ``-tokens-*`` headers are
computed over the long-context pool, its ``-requests-*`` over its class (the page lists no
requests limit for the pool, so the request still counts there).
"""

from __future__ import annotations

import anthropic
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

PREFIX = "anthropic-ratelimit-"
LONG = [{"role": "user", "content": "z" * 1_000_000}]  # 250,004 input tokens
SHORT = [{"role": "user", "content": "hello"}]


@pytest.fixture()
def long_pool(control: Control) -> Control:
    control.configure(
        {
            "models": {"claude-opus-4-6": {"prefill_tokens_per_s": 1e9}},
            "rate_limits": {
                "opus": {
                    "requests_per_minute": 60,
                    "input_tokens_per_minute": 10_000_000,
                    "long_context_input_tokens_per_minute": 300_000,
                    "long_context_output_tokens_per_minute": 50_000,
                }
            },
        }
    ).raise_for_status()
    control.reset()  # every bucket full at its new limit
    return control


def test_a_long_request_draws_on_the_long_context_pool_with_its_headers(
    emulator: EmulatorProcess, long_pool: Control
) -> None:
    """A 250K-token request is charged to the 300,000/min pool, and its headers say so; a
    second one gets 429 naming the long context limit, its headers showing the pool's
    remainder, while a short request still passes on the standard pool, untouched. Rate
    limits page, "Long context rate limits" (2025-08 version); fast mode page, "Rate limits":
    "separate limits for <=200K and >200K input tokens"."""
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    first = client.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=20, messages=LONG
    )
    h = first.headers
    assert int(h[f"{PREFIX}input-tokens-limit"]) == 300_000
    # 250,004 charged, then refilled at 5,000 a second until the headers are written
    assert int(h[f"{PREFIX}input-tokens-remaining"]) < 300_000 - 250_000 + 5000
    assert int(h[f"{PREFIX}output-tokens-limit"]) == 50_000
    assert int(h[f"{PREFIX}tokens-limit"]) == 350_000
    assert int(h[f"{PREFIX}requests-limit"]) == 60  # the class's
    with pytest.raises(anthropic.RateLimitError, match="long context rate limit") as limited:
        client.messages.create(model="claude-opus-4-6", max_tokens=20, messages=LONG)
    refused = limited.value.response.headers
    assert int(refused[f"{PREFIX}input-tokens-remaining"]) < 250_000
    assert int(refused[f"{PREFIX}input-tokens-limit"]) == 300_000
    short = client.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=20, messages=SHORT
    )
    assert int(short.headers[f"{PREFIX}input-tokens-limit"]) == 10_000_000
    assert int(short.headers[f"{PREFIX}input-tokens-remaining"]) > 10_000_000 - 100
    # the long and the short request admitted, both counted by the class's requests limit
    # (refilling 1 a second)
    assert 60 - 2 - 1 <= int(short.headers[f"{PREFIX}requests-remaining"]) <= 60 - 2


def test_a_long_fast_request_uses_fast_modes_single_limit(
    emulator: EmulatorProcess, long_pool: Control
) -> None:
    """Fast mode "uses a single rate limit that covers the full context range" (fast mode
    page, "Rate limits"): a 250K-token fast request is charged to the
    fast limit, leaving the long-context pool full."""
    long_pool.configure({"fast_mode": {"input_tokens_per_minute": 1_000_000}}).raise_for_status()
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    fast = client.beta.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=20, messages=LONG, speed="fast",
        betas=["fast-mode-2026-02-01"],
    )  # fmt: skip
    assert int(fast.headers["anthropic-fast-input-tokens-remaining"]) < 1_000_000 - 250_000
    standard = client.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=20, messages=LONG
    )
    assert int(standard.headers[f"{PREFIX}input-tokens-remaining"]) >= 300_000 - 250_010
