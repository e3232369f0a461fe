"""The harness prices cache writes by TTL, from ``usage.cache_creation``, through the real SDK
against the emulator.

Prices: pricing page (platform.claude.com/docs/en/about-claude/pricing, "Model pricing" and
the prompt caching multipliers, as of 2026-11): 5-minute cache writes 1.25x the base input
price, 1-hour writes 2x, cache reads 0.1x; Claude Opus 4.6 $5 / $25 per MTok.
"""

from __future__ import annotations

from typing import Any

import pytest

from loadkit.catalog import cost_usd
from loadkit.client import RequestSpec, StreamingClient
from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

OPUS_IN, OPUS_OUT = 5.0 / 1e6, 25.0 / 1e6


def _block(tokens: int, letter: str, ttl: str) -> dict[str, Any]:
    marker = {"type": "ephemeral", "ttl": ttl}
    return {"type": "text", "text": letter * 4 * tokens, "cache_control": marker}


def test_each_cache_write_priced_at_its_ttl_rate(
    emulator: EmulatorProcess, control: Control
) -> None:
    """A request writing a 1h prefix and a 5m one: the record keeps usage.cache_creation's
    ephemeral_5m/ephemeral_1h split, and its cost prices the 1h part at 2x and the 5m part at
    1.25x of input (prompt caching page, "Mixing different TTLs" and "Pricing"); the
    request's own cache_ttl ("5m") would have priced it all at 1.25x."""
    client = StreamingClient(emulator.base_url, "pricing-key")
    try:
        spec = RequestSpec(
            "claude-opus-4-6",
            "standard",
            10,
            [{"role": "user", "content": [_block(6000, "m", "5m")]}],
            system=[_block(5000, "s", "1h")],
        )
        record = client.send(spec)
        assert record.ok, record.error_message
        one_hour = record.cache_creation_1h_input_tokens
        five_min = record.cache_creation_5m_input_tokens
        assert 5000 < one_hour < 5100 and 6000 < five_min < 6100
        assert record.cache_creation_input_tokens == one_hour + five_min
        expected = (
            record.input_tokens + 1.25 * five_min + 2.0 * one_hour
        ) * OPUS_IN + record.output_tokens * OPUS_OUT
        assert record.cost_usd == pytest.approx(expected, rel=1e-9)
        all_at_5m = cost_usd(
            "claude-opus-4-6",
            "standard",
            record.input_tokens,
            record.output_tokens,
            cache_creation_tokens=record.cache_creation_input_tokens,
        )
        assert record.cost_usd - all_at_5m == pytest.approx(0.75 * one_hour * OPUS_IN)

        again = client.send(spec)  # all read now: 0.1x, no writes
        assert again.cache_read_input_tokens == one_hour + five_min
        assert again.cache_creation_1h_input_tokens == again.cache_creation_5m_input_tokens == 0
        expected = (
            again.input_tokens + 0.1 * again.cache_read_input_tokens
        ) * OPUS_IN + again.output_tokens * OPUS_OUT
        assert again.cost_usd == pytest.approx(expected, rel=1e-9)
    finally:
        client.close()


def test_writes_without_a_split_are_priced_at_the_requested_ttl() -> None:
    """A server that reports only cache_creation_input_tokens (no usage.cache_creation):
    every write is priced at the TTL the request asked for; with the split, each part at its
    own rate (prompt caching page, "Pricing": 5m writes 1.25x, 1h writes 2x base input;
    Claude Sonnet 4.6 $3 / MTok input, as of 2026-11)."""
    five = cost_usd("claude-sonnet-4-6", "standard", 0, 0, cache_creation_tokens=100_000)
    hour = cost_usd(
        "claude-sonnet-4-6", "standard", 0, 0, cache_creation_tokens=100_000, cache_ttl="1h"
    )
    assert (five, hour) == (pytest.approx(0.375), pytest.approx(0.6))
    split = cost_usd(
        "claude-sonnet-4-6",
        "standard",
        0,
        0,
        cache_creation_tokens=100_000,
        cache_ttl="1h",
        cache_creation_1h_tokens=40_000,
        cache_creation_5m_tokens=60_000,
    )
    assert split == pytest.approx(0.4 * 0.6 + 0.6 * 0.375)
