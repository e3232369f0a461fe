"""How output tokens are charged to the output-token rate limit (OTPM), through the SDK.

The rate limits page (platform.claude.com/docs/en/api/rate-limits, on OTPM, as of 2026-11):
OTPM is estimated from ``max_tokens`` at the beginning of each request, and the estimate is
adjusted at the end to the output tokens actually used. The emulator does that by default
(``output_token_accounting: reserve_max_tokens``); ``generated_only`` charges only the tokens
generated, when the request ends (docs/emulator-config.yaml).
"""

from __future__ import annotations

import itertools

import anthropic
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

OTPM = 600  # 10 output tokens per second
REPLY = 50
REMAINING = "anthropic-ratelimit-output-tokens-remaining"


def _setup(control: Control, accounting: str | None) -> None:
    patch: dict[str, object] = {
        "rate_limits": {"opus": {"output_tokens_per_minute": OTPM}},
        "models": {"claude-opus-4-6": {"ttft_base_ms": 0, "decode_tokens_per_s": 5000}},
        "output_tokens": {"kind": "fixed", "value": REPLY},
    }
    if accounting is not None:
        patch["output_token_accounting"] = accounting
    control.configure(patch).raise_for_status()


def _ask(client: anthropic.Anthropic) -> anthropic.APIResponse[anthropic.types.Message]:
    return client.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
    )


def test_max_tokens_reserved_at_admission_by_default(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Default (as documented): a request with max_tokens 1000 reserves all of it (from a
    full bucket of 600, which it then owes); its unused tokens come back at the end, but the
    bucket is then short of full, so an identical request right after gets 429 for output
    tokens, with a retry-after."""
    assert control.http.get("/_emulator/config").json()["output_token_accounting"] == (
        "reserve_max_tokens"
    )
    _setup(control, None)
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    first = _ask(client)
    assert first.parse().usage.output_tokens == REPLY
    assert int(first.headers[REMAINING]) == 0  # 600 - 1000 reserved, shown as 0
    with pytest.raises(anthropic.RateLimitError, match="output tokens") as limited:
        _ask(client)
    assert float(limited.value.response.headers["retry-after"]) > 0


def test_generated_only_charges_the_tokens_generated(
    emulator: EmulatorProcess, control: Control
) -> None:
    """generated_only: admission reserves nothing (max_tokens 1000 against 600 passes while
    the bucket is not in debt); each request takes its 50 generated tokens when it ends, so
    the remaining count falls by about 50 per request until the bucket is in debt and a
    request gets 429."""
    _setup(control, "generated_only")
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    remaining: list[int] = []
    with pytest.raises(anthropic.RateLimitError, match="output tokens"):
        for _ in range(30):
            remaining.append(int(_ask(client).headers[REMAINING]))
    assert remaining[0] == OTPM  # nothing reserved at admission
    steps = [a - b for a, b in itertools.pairwise(remaining)]
    # each step: one reply's 50 tokens less what refilled meanwhile (10 per second)
    assert all(REPLY - 10 <= step <= REPLY for step in steps[:-1]), steps
    assert OTPM // REPLY <= len(remaining) <= OTPM // REPLY + 3, remaining
