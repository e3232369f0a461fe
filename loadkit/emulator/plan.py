"""What the emulator serves an admitted request: its fault, its timing, its length.

Every draw comes from the emulator's seeded ``random.Random``, in a fixed order, so that a
seed replays the same run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from loadkit.distributions import Distribution
from loadkit.emulator.answer import Block, compose
from loadkit.emulator.cache import CacheOutcome
from loadkit.emulator.config import Faults, ModelProfile, ThinkingAndTools
from loadkit.emulator.content import Features


@dataclass(slots=True)
class Plan:
    """What the emulator decided to serve for one admitted request."""

    input_tokens: int  # uncached, as reported in usage.input_tokens
    cache: CacheOutcome
    output_tokens: int
    stop_reason: str
    ttft_s: float  # prefill time, from the start of service
    decode_tokens_per_s: float
    fault: str | None  # "midstream_error" | "cut" | None
    fault_at_token: int
    # None: one text block (the plain path); else thinking, text and tool_use blocks
    blocks: tuple[Block, ...] | None = None
    text_start: int = 1  # 1-based index of the answer's first text token; 0: no text


def draw_fault(rng: random.Random, faults: Faults) -> str | None:
    """One draw: "api_error" or "overloaded" (refused), "midstream_error" or "cut" (served,
    then broken), or None."""
    draw = rng.random()
    if draw < faults.api_error_rate:
        return "api_error"
    draw -= faults.api_error_rate
    if draw < faults.overloaded_rate:
        return "overloaded"
    draw -= faults.overloaded_rate
    if draw < faults.midstream_error_rate:
        return "midstream_error"
    if draw - faults.midstream_error_rate < faults.connection_cut_rate:
        return "cut"
    return None


def draw_plan(
    rng: random.Random,
    profile: ModelProfile,
    output_tokens: Distribution,
    speed: str,
    uncached: int,
    cache: CacheOutcome,
    max_tokens: int,
    fault: str | None,
    context_room: int | None = None,
    features: Features | None = None,
    settings: ThinkingAndTools | None = None,
) -> Plan:
    ttft_s = (
        profile.ttft_base_ms / 1000.0
        + (uncached + cache.creation_tokens) / profile.prefill_tokens_per_s
    ) * _jitter(rng, profile.ttft_jitter)
    decode = profile.decode_tokens_per_s * _jitter(rng, profile.decode_jitter)
    if speed == "fast":
        decode *= _speedup(rng, profile)
    wanted = max(1, output_tokens.sample(rng))
    if features is not None:
        assert settings is not None
        answer = compose(rng, settings, features, wanted, max_tokens, context_room)
        fault_at = rng.randint(1, max(1, answer.tokens - 1)) if fault else 0
        return Plan(
            uncached,
            cache,
            answer.tokens,
            answer.stop_reason,
            ttft_s,
            decode,
            fault,
            fault_at,
            answer.blocks,
            answer.text_start,
        )
    served_tokens = min(wanted, max_tokens)
    stop_reason = "max_tokens" if wanted >= max_tokens else "end_turn"
    if context_room is not None and served_tokens > context_room:
        # the answer reached the end of the context window first
        served_tokens, stop_reason = max(1, context_room), "model_context_window_exceeded"
    fault_at = rng.randint(1, max(1, served_tokens - 1)) if fault else 0
    return Plan(uncached, cache, served_tokens, stop_reason, ttft_s, decode, fault, fault_at)


def _speedup(rng: random.Random, profile: ModelProfile) -> float:
    """Fast mode's multiplier of decode speed for one request: "up to 2.5x higher output
    tokens per second" (fast mode page, platform.claude.com/docs/en/build-with-claude/
    fast-mode, "How fast mode works", as of 2026-11), drawn around its configured mean."""
    mean, spread = profile.fast_decode_multiplier, profile.fast_decode_spread
    if spread == 0:
        return mean
    draw = rng.gauss(mean, spread)
    return min(profile.fast_decode_max, max(profile.fast_decode_min, draw))


def _jitter(rng: random.Random, sigma: float) -> float:
    """A log-normal factor with mean 1 (so jitter does not shift the average)."""
    if sigma == 0:
        return 1.0
    return math.exp(rng.gauss(-sigma * sigma / 2, sigma))
