"""The emulator driven by the real anthropic SDK, sync and async."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

FAST_BETA = "fast-mode-2026-02-01"
HELLO = [{"role": "user", "content": "Hello there"}]


def client_for(emulator: EmulatorProcess, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test-key", base_url=emulator.base_url, **options)


def async_client_for(emulator: EmulatorProcess, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test-key", base_url=emulator.base_url, **options)


def test_create_stream_event_sequence(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator)
    events = list(
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=HELLO, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert all(e.delta.type == "text_delta" for e in deltas)
    # The first delta carries one token (4 bytes of filler), later ones a few tokens each.
    assert len(deltas[0].delta.text) == 4
    assert {len(d.delta.text) for d in deltas[1:-1]} == {12}
    start = events[0].message
    assert start.id.startswith("msg_") and start.role == "assistant" and start.content == []
    assert start.usage.input_tokens > 0 and start.stop_reason is None
    final = events[-2]
    assert final.delta.stop_reason == "end_turn" and final.usage.output_tokens == 20
    row = control.row("claude-sonnet-4-6", "standard")
    assert row["received"] == row["completed"] == 1 and row["output_tokens"] == 20


def test_messages_stream_final_message(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator)
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=HELLO) as s:
        text = "".join(s.text_stream)
        message = s.get_final_message()
    assert message.usage.output_tokens == 20 and len(text) == 80
    assert message.content[0].text == text
    assert message.usage.speed == "standard"
    assert s.response.headers["request-id"].startswith("req_")


def test_async_stream_and_unary(emulator: EmulatorProcess, control: Control) -> None:
    async def run() -> tuple[Any, Any, Any]:
        client = async_client_for(emulator)
        async with client.messages.stream(
            model="claude-opus-4-6", max_tokens=100, messages=HELLO
        ) as s:
            streamed = await s.get_final_message()
        unary = await client.messages.create(
            model="claude-opus-4-6", max_tokens=100, messages=HELLO
        )
        count = await client.messages.count_tokens(model="claude-opus-4-6", messages=HELLO)
        await client.close()
        return streamed, unary, count

    streamed, unary, count = asyncio.run(run())
    assert streamed.usage.output_tokens == unary.usage.output_tokens == 20
    assert streamed.usage.input_tokens == unary.usage.input_tokens == count.input_tokens
    assert unary.content[0].type == "text" and unary.stop_reason == "end_turn"


def test_non_streaming_max_tokens_cap(emulator: EmulatorProcess, control: Control) -> None:
    message = client_for(emulator).messages.create(
        model="claude-haiku-4-5", max_tokens=7, messages=HELLO
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 7
    assert len(message.content[0].text) == 28


def test_count_tokens_matches_usage_and_models_list(
    emulator: EmulatorProcess, control: Control
) -> None:
    client = client_for(emulator)
    prompt = [{"role": "user", "content": "word " * 1000}]
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=prompt, system="Be brief."
    )
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=prompt, system="Be brief."
    )
    assert counted.input_tokens == message.usage.input_tokens > 1000
    models = client.models.list()
    ids = [m.id for m in models]
    assert {"claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5-20251001"} <= set(ids)
    assert client.models.retrieve("claude-opus-4-6").display_name == "Claude Opus 4.6"


def test_fast_mode_beta(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator)
    raw = client.beta.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=50, messages=HELLO, betas=[FAST_BETA], speed="fast"
    )
    message = raw.parse()
    assert message.usage.speed == "fast"
    # Fast multiplies decode speed (2.5x by default) and leaves TTFT alone.
    assert float(raw.headers["x-emulator-otps"]) == pytest.approx(400 * 2.5)
    assert float(raw.headers["x-emulator-ttft-ms"]) < 60
    for kind in ("input", "output"):
        for part in ("limit", "remaining", "reset"):
            assert f"anthropic-fast-{kind}-tokens-{part}" in raw.headers
    standard = client.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=50, messages=HELLO
    )
    assert float(standard.headers["x-emulator-otps"]) == pytest.approx(400)
    assert "anthropic-fast-input-tokens-limit" not in standard.headers
    assert control.row("claude-opus-4-6", "fast")["completed"] == 1


def test_fast_mode_rules(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator, max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="not supported for model"):
        client.beta.messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=HELLO, betas=[FAST_BETA], speed="fast"
        )
    with pytest.raises(anthropic.BadRequestError, match="speed: fast mode requires"):
        client.beta.messages.create(
            model="claude-opus-4-6", max_tokens=5, messages=HELLO, speed="fast"
        )


def _drain_fast_input(client: anthropic.Anthropic) -> None:
    big = [{"role": "user", "content": "abcd" * 1300}]
    client.beta.messages.create(
        model="claude-opus-4-6", max_tokens=5, messages=big, betas=[FAST_BETA], speed="fast"
    )


def test_fast_429_without_retries(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"fast_mode": {"input_tokens_per_minute": 1200}}).raise_for_status()
    client = client_for(emulator)
    _drain_fast_input(client)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.with_options(max_retries=0).beta.messages.create(
            model="claude-opus-4-6", max_tokens=5, messages=HELLO, betas=[FAST_BETA], speed="fast"
        )
    err = caught.value
    assert err.status_code == 429
    assert float(err.response.headers["retry-after"]) > 0
    assert err.response.headers["anthropic-fast-input-tokens-remaining"] == "0"
    assert err.body["error"]["type"] == "rate_limit_error"
    assert err.response.headers["request-id"] == err.body["request_id"]
    row = control.row("claude-opus-4-6", "fast")
    assert row["rate_limited"] == 1 and row["completed"] == 1


@pytest.mark.slow
def test_fast_429_retried_after_retry_after(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"fast_mode": {"input_tokens_per_minute": 1200}}).raise_for_status()
    client = client_for(emulator, max_retries=3)
    _drain_fast_input(client)
    started = time.monotonic()
    message = client.beta.messages.create(
        model="claude-opus-4-6", max_tokens=5, messages=HELLO, betas=[FAST_BETA], speed="fast"
    )
    waited = time.monotonic() - started
    assert message.usage.speed == "fast"
    row = control.row("claude-opus-4-6", "fast")
    assert row["rate_limited"] >= 1 and row["completed"] == 2
    # Refill is 20 tokens/s; the small request needs ~13 tokens: the SDK must have waited.
    assert waited >= 0.3


@pytest.mark.slow
def test_standard_limits_fall_and_refill(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"rate_limits": {"haiku": {"requests_per_minute": 60}}}).raise_for_status()
    client = client_for(emulator)
    remaining = []
    for _ in range(4):
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=2, messages=HELLO
        )
        remaining.append(int(raw.headers["anthropic-ratelimit-requests-remaining"]))
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "60"
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] < remaining[0]
    time.sleep(2.2)
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=2, messages=HELLO
    )
    assert int(raw.headers["anthropic-ratelimit-requests-remaining"]) >= remaining[-1] + 1


def test_input_limit_charges_counted_tokens(emulator: EmulatorProcess, control: Control) -> None:
    control.configure(
        {"rate_limits": {"sonnet": {"input_tokens_per_minute": 6000}}}
    ).raise_for_status()
    client = client_for(emulator)
    prompt = [{"role": "user", "content": "abcd" * 2500}]
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", messages=prompt).input_tokens
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=2, messages=prompt
    )
    remaining = int(raw.headers["anthropic-ratelimit-input-tokens-remaining"])
    # Charged exactly the counted tokens; at most a few tokens refilled since (100/s).
    assert 6000 - counted <= remaining <= 6000 - counted + 10


def test_standard_429_shape(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"rate_limits": {"haiku": {"requests_per_minute": 1}}}).raise_for_status()
    client = client_for(emulator, max_retries=0)
    client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError, match="rate limit of 1 requests per minute"):
        client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HELLO)


def test_overloaded_and_api_error(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator, max_retries=0)
    control.configure({"faults": {"overloaded_rate": 1.0}}).raise_for_status()
    with pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HELLO)
    assert caught.value.status_code == 529
    control.configure({"faults": {"overloaded_rate": 0.0, "api_error_rate": 1.0}})
    with pytest.raises(anthropic.InternalServerError) as caught_500:
        client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HELLO)
    assert caught_500.value.status_code == 500
    row = control.row("claude-haiku-4-5", "standard")
    assert row["overloaded"] == 1 and row["api_error"] == 1


def test_midstream_error_raises(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"faults": {"midstream_error_rate": 1.0}}).raise_for_status()
    client = client_for(emulator, max_retries=0)
    received = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HELLO) as s,
    ):
        for text in s.text_stream:
            received.append(text)
    assert received, "the error comes after at least one token"
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert control.row("claude-haiku-4-5", "standard")["midstream_error"] == 1


def test_connection_cut_mid_stream(emulator: EmulatorProcess, control: Control) -> None:
    control.configure({"faults": {"connection_cut_rate": 1.0}}).raise_for_status()
    client = client_for(emulator, max_retries=0)
    with (
        pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)),
        client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HELLO) as s,
    ):
        for _ in s.text_stream:
            pass
    row = control.row("claude-haiku-4-5", "standard")
    assert row["cut"] == 1 and 1 <= row["output_tokens"] < 20


def test_slow_first_byte(emulator: EmulatorProcess, control: Control) -> None:
    control.configure(
        {"faults": {"slow_first_byte_rate": 1.0, "slow_first_byte_ms": 300}}
    ).raise_for_status()
    client = client_for(emulator)
    started = time.perf_counter()
    client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HELLO)
    assert time.perf_counter() - started >= 0.3


def _cached_system(tokens: int) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": "wxyz" * tokens, "cache_control": {"type": "ephemeral"}},
    ]


def test_prompt_cache_hit_then_speed_switch_misses(
    emulator: EmulatorProcess, control: Control
) -> None:
    client = client_for(emulator)
    system = _cached_system(5000)

    def ask(**extra: Any) -> Any:
        raw = client.beta.messages.with_raw_response.create(
            model="claude-opus-4-6", max_tokens=5, system=system, messages=HELLO, **extra
        )
        return raw.parse(), float(raw.headers["x-emulator-ttft-ms"])

    first, first_ttft = ask()
    assert first.usage.cache_creation_input_tokens > 5000
    assert first.usage.cache_read_input_tokens == 0
    second, second_ttft = ask()
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens
    assert second_ttft < first_ttft - 30  # 5,000 cached tokens skip ~50 ms of prefill
    fast, _ = ask(betas=[FAST_BETA], speed="fast")
    assert fast.usage.cache_read_input_tokens == 0
    assert fast.usage.cache_creation_input_tokens == first.usage.cache_creation_input_tokens


def test_prompt_cache_minimum_length(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator)
    for _ in range(2):  # Opus needs 4,096 tokens; 2,000 never caches
        message = client.messages.create(
            model="claude-opus-4-6", max_tokens=5, system=_cached_system(2000), messages=HELLO
        )
        assert message.usage.cache_creation_input_tokens == 0
        assert message.usage.cache_read_input_tokens == 0
    message = client.messages.create(  # Sonnet caches from 1,024
        model="claude-sonnet-4-6", max_tokens=5, system=_cached_system(2000), messages=HELLO
    )
    assert message.usage.cache_creation_input_tokens > 2000


def test_ttft_follows_prefill_model(emulator: EmulatorProcess, control: Control) -> None:
    client = client_for(emulator)
    prompt = [{"role": "user", "content": "abcd" * 10_000}]
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=prompt) as s:
        sent = time.perf_counter()
        planned = float(s.response.headers["x-emulator-ttft-ms"])
        next(iter(s.text_stream))
        measured = (time.perf_counter() - sent) * 1000
    # 40 ms base + ~10,000 tokens at 100,000 tokens/s.
    assert planned == pytest.approx(140, abs=2)
    assert planned - 5 < measured + 5  # headers came before the first token


def test_capacity_queue_then_529(emulator: EmulatorProcess, control: Control) -> None:
    control.configure(
        {
            "models": {
                "claude-haiku-4-5": {
                    "max_concurrent_streams": 2,
                    "max_queue": 1,
                    "decode_tokens_per_s": 50,
                }
            }
        }
    ).raise_for_status()

    async def one(client: anthropic.AsyncAnthropic) -> Any:
        try:
            return await client.messages.with_raw_response.create(
                model="claude-haiku-4-5", max_tokens=20, messages=HELLO
            )
        except anthropic.OverloadedError as err:
            return err

    async def run() -> list[Any]:
        client = async_client_for(emulator, max_retries=0)
        results = await asyncio.gather(*(one(client) for _ in range(4)))
        await client.close()
        return results

    results = asyncio.run(run())
    overloaded = [r for r in results if isinstance(r, anthropic.OverloadedError)]
    served = [r for r in results if not isinstance(r, anthropic.OverloadedError)]
    assert len(overloaded) == 1 and len(served) == 3
    queue_ms = sorted(float(r.headers["x-emulator-queue-ms"]) for r in served)
    assert queue_ms[0] < 5 and queue_ms[2] > 300  # the third waited for a slot (~420 ms)
    row = control.row("claude-haiku-4-5", "standard")
    assert row["overloaded"] == 1 and row["completed"] == 3 and row["in_flight"] == 0
