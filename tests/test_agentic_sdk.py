"""Content mode rebuilds an answer as the SDK itself does.

One streamed answer of the emulator (thinking, text, a tool call: extended thinking page,
"Streaming thinking", and tool use page, "Streaming", platform.claude.com/docs, as of
2026-11) is read twice from the same bytes: by the SDK's own accumulator
(``anthropic.lib.streaming._messages.accumulate_event``, what ``messages.stream()`` uses) and by
``loadkit.content.Answer``. The blocks must be the same, and the answer sent back as the
assistant's turn with its tool_result must be accepted. Then ``StreamingClient`` in content
mode, on a live request, stamps what the emulator says it served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from loadkit.client import RequestSpec, StreamingClient
from loadkit.content import Answer
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.toolsets import PRESETS, tool_result_block

from .conftest import QUICK_MODELS, Control

MODEL = "claude-sonnet-4-6"
CONFIG: dict[str, Any] = {
    "models": QUICK_MODELS,
    "output_tokens": {"kind": "fixed", "value": 30},
    "thinking_and_tools": {
        "thinking_budget_percent": {"kind": "fixed", "value": 10},
        "tool_call_probability": 1.0,
        "text_before_tool_tokens": {"kind": "fixed", "value": 6},
    },
}
REQUEST: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 2048,
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": PRESETS["agent"],
    "tool_choice": {"type": "auto"},
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(config=CONFIG, seed=3) as emu:
        yield emu


def _events(body: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


@pytest.mark.slow
def test_blocks_rebuilt_as_the_sdk_rebuilds_them(emulator: EmulatorProcess) -> None:
    sdk = anthropic.Anthropic(api_key="test-key", base_url=emulator.base_url)
    with sdk.messages.with_streaming_response.create(stream=True, **REQUEST) as response:
        body = b"".join(response.http_response.iter_bytes())
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    answer = Answer()
    for now, event in enumerate(_events(body), start=1):
        data = json.loads(event.split(b"\ndata: ", 1)[1])
        if data["type"] not in ("ping", "error"):
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)
        answer.feed(event, now)
    assert snapshot is not None and snapshot.stop_reason == "tool_use"
    sdk_blocks = [block.to_dict() for block in snapshot.content]
    ours = answer.content()
    assert [b["type"] for b in ours] == ["thinking", "text", "tool_use"]
    assert ours == [{k: v for k, v in block.items() if k != "citations"} for block in sdk_blocks]
    assert ours[0]["signature"]
    tool = next(t for t in PRESETS["agent"] if t["name"] == ours[2]["name"])
    assert set(tool["input_schema"]["required"]) <= set(ours[2]["input"])
    # the rebuilt turn, answered, is a valid next request
    follow_up = sdk.messages.create(
        **{
            **REQUEST,
            "messages": [
                *REQUEST["messages"],
                {"role": "assistant", "content": ours},
                {"role": "user", "content": [tool_result_block(ours[2])]},
            ],
        }
    )
    assert follow_up.stop_reason == "end_turn"


@pytest.mark.slow
def test_content_mode_stamps_what_was_served(emulator: EmulatorProcess) -> None:
    client = StreamingClient(emulator.base_url, "test-key")
    spec = RequestSpec(
        MODEL,
        "standard",
        2048,
        REQUEST["messages"],
        thinking_budget=1024,
        tools=PRESETS["agent"],
        tool_choice={"type": "auto"},
        answer=Answer(),
    )
    record = client.send(spec)
    client.close()
    assert record.ok and record.parsed_content and record.stop_reason == "tool_use"
    truth = Control(emulator.base_url).served(record.request_id or "")
    assert record.tool_calls == 1
    assert (record.thinking_tokens, record.text_tokens, record.tool_use_tokens) == (
        truth["thinking_tokens"],
        truth["text_tokens"],
        truth["tool_use_tokens"],
    )
    # thinking streams first: the first text token comes later than the first token
    assert record.t_first_token < record.t_first_text
    assert record.t_first_text >= truth["first_text_ns"] - 10_000  # never before it was sent


@pytest.mark.slow
@pytest.mark.parametrize("interleaved", [False, True])
def test_thinking_after_a_tool_result_only_with_the_interleaved_beta(
    emulator: EmulatorProcess, interleaved: bool
) -> None:
    """Extended thinking page, "Interleaved thinking" (beta interleaved-thinking-2025-05-14,
    as of 2026-11): with it, the model can think again after a tool result; without it, the
    answer to a tool result has no thinking block."""
    client = StreamingClient(emulator.base_url, "test-key")

    def spec(messages: list[dict[str, Any]]) -> RequestSpec:
        return RequestSpec(
            MODEL,
            "standard",
            2048,
            messages,
            thinking_budget=1024,
            interleaved_thinking=interleaved,
            tools=PRESETS["agent"],
            tool_choice={"type": "auto"},
            answer=Answer(),
        )

    first = spec(REQUEST["messages"])
    record = client.send(first)
    assert record.ok and first.answer is not None, record.error_message
    content = first.answer.content()
    call = next(b for b in content if b["type"] == "tool_use")
    follow = spec(
        [
            *REQUEST["messages"],
            {"role": "assistant", "content": content},
            {"role": "user", "content": [tool_result_block(call)]},
        ]
    )
    after = client.send(follow)
    client.close()
    assert after.ok, after.error_message
    assert (after.thinking_tokens > 0) is interleaved
    assert (after.t_first_text > after.t_first_token) is interleaved
