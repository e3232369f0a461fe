"""Context windows and maximum outputs per model, as the API documents them.

Docs followed (platform.claude.com model pages, as of 2026-11): Claude Opus 4.6 and Sonnet 4.6,
context window 1M tokens and max output 128K; Sonnet 4.5 and Haiku 4.5, 200K and 64K. The
models overview's earlier version (footnote 3) gives Sonnet 4.5 a 1M window with the
``context-1m-2025-08-07`` beta header. A prompt longer than the window is refused with 400
``invalid_request_error`` "prompt is too long: N tokens > W maximum" (the API's wording); an
answer that reaches the end of the window stops there with ``stop_reason``
``model_context_window_exceeded`` ("Handling stop reasons").
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import QUICK_CONFIG

API = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
# about 250,000 tokens: the emulator counts one token per 4 characters of text
LONG = [{"role": "user", "content": "abcd" * 250_000}]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    quick = {"ttft_base_ms": 5, "prefill_tokens_per_s": 1e9, "decode_tokens_per_s": 2000}
    models = {m: quick for m in ("claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-5",
                                 "claude-haiku-4-5")}  # fmt: skip
    config = {**QUICK_CONFIG, "models": models}  # the shipped windows; quick answers
    with EmulatorProcess(config=config, seed=4) as emu:
        yield emu


def post(emulator: EmulatorProcess, body: dict[str, object], beta: str = "") -> httpx2.Response:
    headers = {**API, **({"anthropic-beta": beta} if beta else {})}
    return httpx2.post(f"{emulator.base_url}/v1/messages", json=body, headers=headers, timeout=60)


def test_a_prompt_past_the_window_is_refused_naming_both_sizes(emulator: EmulatorProcess) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=LONG)
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("prompt is too long: ") and message.endswith(" > 200000 maximum")
    assert int(message.split()[4]) > 200_000
    stats = httpx2.get(f"{emulator.base_url}/_emulator/stats").json()
    assert stats["totals"]["invalid"] >= 1


@pytest.mark.parametrize(
    ("model", "beta", "status"),
    [
        ("claude-haiku-4-5", "", 400),
        ("claude-haiku-4-5", "context-1m-2025-08-07", 400),  # no long-context beta for Haiku
        ("claude-sonnet-4-5", "", 400),
        ("claude-sonnet-4-5", "context-1m-2025-08-07", 200),
        ("claude-sonnet-4-6", "", 200),
        ("claude-opus-4-6", "", 200),
    ],
)
def test_each_models_window(emulator: EmulatorProcess, model: str, beta: str, status: int) -> None:
    answer = post(emulator, {"model": model, "max_tokens": 10, "messages": LONG}, beta)
    assert answer.status_code == status, answer.text[:300]


def test_max_output_is_the_models(emulator: EmulatorProcess) -> None:
    for model, ceiling in (("claude-haiku-4-5", 64_000), ("claude-opus-4-6", 128_000)):
        hello = [{"role": "user", "content": "hi"}]
        over = post(emulator, {"model": model, "max_tokens": ceiling + 1, "messages": hello})
        assert over.status_code == 400 and f"> {ceiling}" in over.json()["error"]["message"]


def test_an_answer_stops_at_the_end_of_the_window(emulator: EmulatorProcess) -> None:
    """A prompt 5 tokens short of Haiku's window, and room for 20 tokens asked: the answer
    stops after 5 with ``model_context_window_exceeded``."""
    count = httpx2.post(
        f"{emulator.base_url}/v1/messages/count_tokens", headers=API, timeout=60,
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "abcd"}]},
    ).json()["input_tokens"]  # fmt: skip
    fill = 200_000 - 5 - (count - 1)  # the one "abcd" token is replaced by `fill` of them
    prompt = [{"role": "user", "content": "abcd" * fill}]
    answer = post(emulator, {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": prompt})
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert body["usage"]["input_tokens"] == 200_000 - 5
    assert body["usage"]["output_tokens"] == 5
    assert body["stop_reason"] == "model_context_window_exceeded"
