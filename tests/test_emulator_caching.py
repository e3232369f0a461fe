"""Prompt caching as the emulator serves it, driven through the real anthropic SDK.

Every behaviour cites the prompt caching page, https://platform.claude.com/docs/en/build-with-
claude/prompt-caching (as of 2026-11), and the API reference of ``usage.cache_creation``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

EPHEMERAL = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


def _client(emulator: EmulatorProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="cache-key", base_url=emulator.base_url, max_retries=0)


def _text(tokens: int, letter: str = "w") -> str:
    return letter * 4 * tokens  # the emulator counts 4 bytes of text as one token


def _block(tokens: int, letter: str, marker: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": _text(tokens, letter)}
    if marker is not None:
        block["cache_control"] = marker
    return block


def _ask(client: anthropic.Anthropic, **body: Any) -> Any:
    return client.messages.create(model="claude-opus-4-6", max_tokens=5, **body).usage


def test_automatic_caching_marks_the_last_block_and_moves_forward(
    emulator: EmulatorProcess, control: Control
) -> None:
    """ "Automatic caching: Add a single cache_control field at the top level of your request.
    The system automatically applies the cache breakpoint to the last cacheable block and
    moves it forward as conversations grow" (prompt caching page, "Automatic caching").
    The whole prompt is written, then read; a grown conversation reads the old prefix and
    writes only what was added."""
    client = _client(emulator)
    turn1 = [{"role": "user", "content": _text(5000, "a")}]
    total1 = client.messages.count_tokens(model="claude-opus-4-6", messages=turn1).input_tokens
    first = _ask(client, messages=turn1, cache_control=EPHEMERAL)
    assert first.cache_creation_input_tokens == total1 and first.cache_read_input_tokens == 0
    assert first.input_tokens == 0
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_5m_input_tokens == total1
    assert first.cache_creation.ephemeral_1h_input_tokens == 0
    again = _ask(client, messages=turn1, cache_control=EPHEMERAL)
    assert again.cache_read_input_tokens == total1 and again.cache_creation_input_tokens == 0

    turn2 = [*turn1, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    total2 = client.messages.count_tokens(model="claude-opus-4-6", messages=turn2).input_tokens
    grown = _ask(client, messages=turn2, cache_control=EPHEMERAL)
    assert grown.cache_read_input_tokens == total1
    assert grown.cache_creation_input_tokens == total2 - total1
    # Without the top-level field nothing is cached at all.
    plain = _ask(client, messages=[{"role": "user", "content": _text(5000, "b")}])
    assert plain.cache_creation_input_tokens == plain.cache_read_input_tokens == 0


def test_automatic_caching_with_explicit_breakpoints(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Automatic caching "uses one of the 4 available breakpoint slots" alongside explicit
    ones; on a last block that already has the same cache_control it adds nothing; a request
    with 4 explicit breakpoints and automatic caching is refused (prompt caching page,
    "Automatic caching" / "Combining automatic and explicit caching")."""
    client = _client(emulator)
    system = [_block(5000, "s", ONE_HOUR)]
    messages = [{"role": "user", "content": [_block(5000, "m")]}]
    usage = _ask(client, system=system, messages=messages, cache_control=EPHEMERAL)
    assert usage.cache_creation is not None
    one_hour = usage.cache_creation.ephemeral_1h_input_tokens
    assert 5000 < one_hour < 5100  # the system prompt, up to its explicit 1h breakpoint
    assert usage.cache_creation.ephemeral_5m_input_tokens > 5000  # the message, automatically
    same = [{"role": "user", "content": [_block(5000, "n", EPHEMERAL)]}]
    assert _ask(client, messages=same, cache_control=EPHEMERAL).cache_creation_input_tokens > 0
    marked = [_block(10, letter, EPHEMERAL) for letter in "pqrs"]
    four = [{"role": "user", "content": [*marked, _block(1, "t")]}]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
        _ask(client, messages=four, cache_control=EPHEMERAL)
    _ask(client, messages=four)  # the same 4 explicit breakpoints alone are fine


def test_cache_creation_breakdown_by_ttl(emulator: EmulatorProcess, control: Control) -> None:
    """``usage.cache_creation`` splits cache writes into ``ephemeral_5m_input_tokens`` and
    ``ephemeral_1h_input_tokens`` (Messages API reference, Usage object); with mixed TTLs the
    part up to the last 1h breakpoint (B - A) is a 1-hour write and the rest (C - B) a
    5-minute write (prompt caching page, "Mixing different TTLs")."""
    client = _client(emulator)
    system = [_block(5000, "h", ONE_HOUR)]
    messages = [{"role": "user", "content": [_block(6000, "f", EPHEMERAL)]}]
    first = _ask(client, system=system, messages=messages)
    assert first.cache_creation is not None
    b = first.cache_creation.ephemeral_1h_input_tokens
    c_minus_b = first.cache_creation.ephemeral_5m_input_tokens
    assert 5000 < b < 5100 and 6000 < c_minus_b < 6100
    assert first.cache_creation_input_tokens == b + c_minus_b
    # The same system with another message: A = B is read, and only C - B written at 5m.
    other = [{"role": "user", "content": [_block(3000, "g", EPHEMERAL)]}]
    second = _ask(client, system=system, messages=other)
    assert second.cache_read_input_tokens == b
    assert second.cache_creation is not None
    assert second.cache_creation.ephemeral_1h_input_tokens == 0
    assert second.cache_creation.ephemeral_5m_input_tokens == second.cache_creation_input_tokens
    assert 3000 < second.cache_creation_input_tokens < 3100
    # Streaming reports the same breakdown in message_start.
    with client.messages.stream(
        model="claude-opus-4-6", max_tokens=5, system=[_block(4500, "k", ONE_HOUR)], messages=other
    ) as stream:
        streamed = stream.get_final_message().usage
    assert streamed.cache_creation is not None
    assert streamed.cache_creation.ephemeral_1h_input_tokens > 4500
    assert streamed.cache_creation.ephemeral_5m_input_tokens > 3000


def test_longer_ttl_must_come_first(emulator: EmulatorProcess, control: Control) -> None:
    """ "When mixing TTLs ... cache entries with longer TTL must appear before shorter TTLs
    (i.e., a 1-hour cache entry must appear before any 5-minute cache entries)" (prompt caching
    page, "Mixing different TTLs"): a 1h breakpoint after a 5m one gets 400, explicit or
    automatic; 1h then 5m is served."""
    client = _client(emulator)
    wrong = [{"role": "user", "content": [_block(100, "a", EPHEMERAL), _block(100, "b", ONE_HOUR)]}]
    with pytest.raises(anthropic.BadRequestError, match="longer TTLs must come before"):
        _ask(client, messages=wrong)
    system_5m = [_block(100, "c", EPHEMERAL)]
    hello = [{"role": "user", "content": "hello"}]
    with pytest.raises(anthropic.BadRequestError, match="longer TTLs must come before"):
        _ask(client, system=system_5m, messages=hello, cache_control=ONE_HOUR)
    right = [{"role": "user", "content": [_block(100, "a", ONE_HOUR), _block(100, "b", EPHEMERAL)]}]
    assert _ask(client, messages=right).output_tokens > 0
    assert control.row("claude-opus-4-6", "standard")["invalid"] == 2


@pytest.mark.parametrize(
    ("model", "minimum"),
    [
        ("claude-opus-4-6", 4096),
        ("claude-sonnet-4-6", 1024),
        ("claude-sonnet-4-5", 1024),
        ("claude-haiku-4-5", 4096),
    ],
)
def test_minimum_cacheable_length_per_model(
    emulator: EmulatorProcess, control: Control, model: str, minimum: int
) -> None:
    """Minimum cacheable prompt length (prompt caching page, "Cache limitations", as of
    2026-11): 4,096 tokens for Claude Opus 4.6 and Haiku 4.5; 1,024 for Claude Sonnet 4.6
    (lowered from 2,048 in an earlier version of the page) and Sonnet 4.5. A prompt one token
    short is not cached; one of exactly the minimum is."""
    client = _client(emulator)

    def prompt(tokens: int, letter: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": _text(tokens, letter)}]

    base = client.messages.count_tokens(model=model, messages=prompt(1, "z")).input_tokens - 1
    for letter, size, cached in (("x", minimum - 1, False), ("y", minimum, True)):
        messages = prompt(size - base, letter)
        total = client.messages.count_tokens(model=model, messages=messages).input_tokens
        assert total == size
        usage = client.messages.create(
            model=model, max_tokens=5, messages=messages, cache_control=EPHEMERAL
        ).usage
        assert usage.cache_creation_input_tokens == (size if cached else 0), (model, size)
