"""The emulator's extended thinking, tool use and interleaved text, through the real SDK.

Documentation followed (as of 2026-11):

- extended thinking page (platform.claude.com/docs/en/build-with-claude/extended-thinking):
  "How to use extended thinking" (budget_tokens >= 1024, < max_tokens), "Interleaved thinking"
  (beta interleaved-thinking-2025-05-14: thinking after tool results, a budget above
  max_tokens), "Feature compatibility" (no temperature or top_k modifications, no forced
  tool use, top_p 0.95-1);
- streaming page (platform.claude.com/docs/en/build-with-claude/streaming): "Streaming request
  with extended thinking" (thinking_delta, one signature_delta before content_block_stop),
  "Streaming request with tool use" (input_json_delta pieces joining to the input);
- tool use pages (platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use):
  "Forcing tool use" (tool_choice auto, any, tool, none; no text before a forced call),
  tool names ^[a-zA-Z0-9_-]{1,64}$; handling stop reasons page ("tool_use");
- context windows page ("The context window with extended thinking ... and tool use"):
  previous turns' thinking blocks are not counted, the current tool-use turn's are.

The 400 messages are the API's own where its answers show one.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess
from loadkit.emulator.sse import filler_text

from .conftest import QUICK_CONFIG, Control

MODEL = "claude-sonnet-4-6"
RATE = 400.0  # the quick config's decode tokens/s, no jitter
INTERLEAVED = {"anthropic-beta": "interleaved-thinking-2025-05-14"}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather at a place",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
            "detail": {"type": "object", "properties": {"hourly": {"type": "boolean"}}},
        },
        "required": ["location", "unit", "days", "detail"],
    },
}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
THINKING = {"type": "enabled", "budget_tokens": 1024}
RAW_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


def client_for(emulator: EmulatorProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test-key", base_url=emulator.base_url, max_retries=0)


def configure(control: Control, **settings: Any) -> None:
    answers = {
        "thinking_budget_percent": {"kind": "fixed", "value": 10},
        "tool_call_probability": 1.0,
        "text_before_tool_tokens": {"kind": "fixed", "value": 6},
        **settings,
    }
    control.configure({"thinking_and_tools": answers}).raise_for_status()


def test_thinking_streams_a_signed_block_then_text(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Streaming page, "Streaming request with extended thinking": a thinking block opens
    empty, grows by thinking_delta, gets one signature_delta just before its stop; then the
    text block. usage.output_tokens counts both; the served ground truth splits them and
    times the first text token one decode interval per thinking token after the first."""
    configure(control)
    with client_for(emulator).messages.stream(
        model=MODEL, max_tokens=2000, thinking=THINKING, messages=ASK
    ) as stream:
        events = [e for e in stream if e.type in RAW_EVENTS]  # not the SDK's own
        message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert len(thinking.signature) > 40 and thinking.thinking == filler_text(102)  # 10% of 1024
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [(0, "thinking"), (1, "text")]
    assert starts[0].content_block.thinking == ""
    deltas = [(e.index, e.delta.type) for e in events if e.type == "content_block_delta"]
    assert deltas.count((0, "signature_delta")) == 1
    assert deltas.index((0, "signature_delta")) == deltas.count((0, "thinking_delta"))
    kinds = [e.type for e in events]
    signature_at = next(
        i
        for i, e in enumerate(events)
        if getattr(e, "delta", None) and e.delta.type == "signature_delta"
    )
    assert (
        events[signature_at + 1].type == "content_block_stop"
        and events[signature_at + 1].index == 0
    )
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 102 + 20 == len(thinking.thinking + text.text) // 4

    served = control.served(stream.response.headers["request-id"])
    assert (served["thinking_tokens"], served["text_tokens"], served["tool_use_tokens"]) == (
        102,
        20,
        0,
    )
    assert served["output_tokens"] == message.usage.output_tokens
    row = control.row(MODEL, "standard")  # /_emulator/stats splits output tokens the same way
    assert (row["output_tokens"], row["thinking_tokens"], row["tool_use_tokens"]) == (122, 102, 0)
    # the first text token is token 103: never before its decode time, counted from the
    # planned first token (0.01 ms: the float rounding of planned_ttft_ms)
    text_ms = (served["first_text_ns"] - served["arrived_ns"]) / 1e6
    assert text_ms >= served["planned_ttft_ms"] + 102 / RATE * 1000 - 0.01
    assert served["first_text_ns"] > served["first_token_ns"]


def test_auto_tool_call_streams_text_then_tool_use(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Tool use under tool_choice auto: text first ("I'll check..."), then a tool_use block
    with a toolu_ id, its name and input {} at the start, input_json_delta pieces that join
    to JSON holding the schema's required properties; stop_reason tool_use."""
    configure(control)
    with client_for(emulator).messages.stream(
        model=MODEL, max_tokens=500, tools=[WEATHER], messages=ASK
    ) as stream:
        events = [e for e in stream if e.type in RAW_EVENTS]
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    call = message.content[1]
    assert message.stop_reason == "tool_use" and call.name == "get_weather"
    assert call.id.startswith("toolu_")
    assert set(call.input) == {"location", "unit", "days", "detail"}
    assert isinstance(call.input["location"], str) and call.input["unit"] == "celsius"
    assert isinstance(call.input["days"], int) and call.input["detail"] == {}
    start = next(e for e in events if e.type == "content_block_start" and e.index == 1)
    assert start.content_block.input == {} and start.content_block.id == call.id
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert pieces[0] == "" and len(pieces) > 2  # the documented example's empty first piece
    assert json.loads("".join(pieces)) == call.input
    tool_tokens = (len("".join(pieces)) + 3) // 4
    assert message.usage.output_tokens == 6 + tool_tokens
    served = control.served(stream.response.headers["request-id"])
    assert (served["text_tokens"], served["tool_use_tokens"]) == (6, tool_tokens)
    assert served["first_text_ns"] == served["first_token_ns"] or (
        0 <= served["first_text_ns"] - served["first_token_ns"] < 5_000_000
    )


def _follow_up(message: anthropic.types.Message, prompt: list[dict[str, Any]]) -> list[Any]:
    call = next(b for b in message.content if b.type == "tool_use")
    answer = [b.model_dump(exclude_none=True) for b in message.content]
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees, sunny"}
    return [
        *prompt,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": [result]},
    ]


def test_tool_result_turn_is_answered_in_text_with_thinking_only_when_interleaved(
    emulator: EmulatorProcess, control: Control
) -> None:
    """After a tool_result the answer is text (tool_call_after_result_probability 0, so a
    conversation ends). Without the interleaved-thinking beta Claude thinks once per assistant
    turn: no new thinking block; with it, a thinking block comes before the text."""
    configure(control)
    client = client_for(emulator)
    first = client.messages.create(
        model=MODEL, max_tokens=2000, thinking=THINKING, tools=[WEATHER], messages=ASK
    )
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    conversation = _follow_up(first, ASK)
    plain = client.messages.create(
        model=MODEL, max_tokens=2000, thinking=THINKING, tools=[WEATHER], messages=conversation
    )
    assert [b.type for b in plain.content] == ["text"] and plain.stop_reason == "end_turn"
    with client.messages.stream(
        model=MODEL,
        max_tokens=2000,
        thinking=THINKING,
        tools=[WEATHER],
        messages=conversation,
        extra_headers=INTERLEAVED,
    ) as stream:
        interleaved = stream.get_final_message()
    assert [b.type for b in interleaved.content] == ["thinking", "text"]
    assert interleaved.content[0].signature and interleaved.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("choice", "blocks", "name"),
    [
        ({"type": "tool", "name": "get_time"}, ["tool_use"], "get_time"),
        ({"type": "any"}, ["tool_use"], None),
        ({"type": "none"}, ["text"], None),
    ],
)
def test_tool_choice(
    emulator: EmulatorProcess,
    control: Control,
    choice: dict[str, Any],
    blocks: list[str],
    name: str | None,
) -> None:
    """ "Forcing tool use": any and tool always call (tool: the one named) with no text
    before the call; none never calls."""
    configure(control)
    message = client_for(emulator).messages.create(
        model=MODEL, max_tokens=500, tools=[WEATHER, CLOCK], tool_choice=choice, messages=ASK
    )
    assert [b.type for b in message.content] == blocks
    if blocks == ["tool_use"]:
        assert message.stop_reason == "tool_use"
        assert name is None or message.content[0].name == name
    else:
        assert message.stop_reason == "end_turn"


def test_adaptive_thinking_on_the_models_that_have_it(
    emulator: EmulatorProcess, control: Control
) -> None:
    """Adaptive thinking page (platform.claude.com/docs/en/build-with-claude/
    adaptive-thinking, as of 2026-11): thinking {type: adaptive} on Opus 4.6 and Sonnet 4.6,
    which "also automatically enables interleaved thinking" (a thinking block after a tool
    result, no beta header); other models (Haiku 4.5 here) need type enabled: 400."""
    configure(control)
    client = client_for(emulator)
    adaptive: Any = {"type": "adaptive"}
    first = client.messages.create(
        model=MODEL, max_tokens=1001, thinking=adaptive, tools=[WEATHER], messages=ASK
    )
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert len(first.content[0].thinking) == 4 * 100  # 10% of max_tokens - 1
    again = client.messages.create(
        model=MODEL,
        max_tokens=1001,
        thinking=adaptive,
        tools=[WEATHER],
        messages=_follow_up(first, ASK),
    )
    assert [b.type for b in again.content] == ["thinking", "text"]
    with pytest.raises(anthropic.BadRequestError, match="'adaptive' is not supported"):
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=1001, thinking=adaptive, messages=ASK
        )


def test_interleaved_budget_may_exceed_max_tokens(
    emulator: EmulatorProcess, control: Control
) -> None:
    """ "Interleaved thinking": with the beta and tools, budget_tokens may exceed max_tokens
    (the limit is the context window); the answer still stops at max_tokens."""
    configure(control, thinking_budget_percent={"kind": "fixed", "value": 100})
    client = client_for(emulator)
    thinking = {"type": "enabled", "budget_tokens": 3000}
    message = client.messages.create(
        model=MODEL,
        max_tokens=200,
        thinking=thinking,
        tools=[WEATHER],
        messages=ASK,
        extra_headers=INTERLEAVED,
    )
    assert [b.type for b in message.content] == ["thinking"]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 200
    with pytest.raises(anthropic.BadRequestError, match="must be greater than"):
        client.messages.create(
            model=MODEL, max_tokens=200, thinking=thinking, tools=[WEATHER], messages=ASK
        )


ASSISTANT_CALL = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_01abc", "name": "get_time", "input": {}}],
}


SIGNED_THOUGHT = {"type": "thinking", "thinking": "word " * 400, "signature": "c2ln"}


def _result(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "noon"}


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1000}},
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2000}},
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        ({"thinking": {"type": "sometimes"}}, "thinking.type: Input should be"),
        (
            {"thinking": THINKING, "extra_body": {"temperature": 0.5}},
            "`temperature` may only be set to 1 when thinking is enabled",
        ),
        ({"thinking": THINKING, "extra_body": {"top_k": 5}}, "`top_k` must be unset"),
        ({"thinking": THINKING, "extra_body": {"top_p": 0.5}}, "`top_p` must be greater"),
        (
            {"thinking": THINKING, "tools": [CLOCK], "tool_choice": {"type": "any"}},
            "Thinking may not be enabled when tool_choice forces tool use.",
        ),
        (
            {"tools": [{**CLOCK, "name": "get time"}]},
            "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
        ),
        (
            {"tools": [{"name": "get_time", "input_schema": {"type": "string"}}]},
            "tools.0.custom.input_schema.type: Input should be 'object'",
        ),
        ({"tools": [{"name": "get_time"}]}, "tools.0.custom.input_schema: Field required"),
        ({"tools": [CLOCK, CLOCK]}, "Tool names must be unique"),
        (
            {"tool_choice": {"type": "any"}},
            "tool_choice may only be specified while providing tools.",
        ),
        (
            {"tools": [CLOCK], "tool_choice": {"type": "tool", "name": "get_weather"}},
            "tool_choice.tool.name: 'get_weather' is not the name of a tool",
        ),
        ({"tools": [CLOCK], "tool_choice": {"type": "maybe"}}, "tool_choice.type: Input should be"),
        (
            {
                "tools": [CLOCK],
                "messages": [
                    *ASK,
                    ASSISTANT_CALL,
                    {"role": "user", "content": [_result("toolu_01zzz")]},
                ],
            },
            "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
            "toolu_01zzz. Each `tool_result` block must have a corresponding `tool_use` block "
            "in the previous message.",
        ),
        (
            {
                "tools": [CLOCK],
                "messages": [*ASK, ASSISTANT_CALL, {"role": "user", "content": "and?"}],
            },
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_01abc. Each `tool_use` block must have a corresponding `tool_result` "
            "block in the next message.",
        ),
        (
            {
                "messages": [
                    *ASK,
                    ASSISTANT_CALL,
                    {"role": "user", "content": [_result("toolu_01abc")]},
                ]
            },
            "Requests which include `tool_use` or `tool_result` blocks must define tools.",
        ),
        (
            {
                "tools": [CLOCK],
                "messages": [
                    *ASK,
                    ASSISTANT_CALL,
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "x"}, _result("toolu_01abc")],
                    },
                ],
            },
            "messages.2: tool_result blocks must come first",
        ),
        (
            {
                "messages": [
                    *ASK,
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]},
                    {"role": "user", "content": "so?"},
                ],
                "thinking": THINKING,
            },
            "messages.1.content.0.thinking.signature: Field required",
        ),
        (
            {
                "thinking": THINKING,
                "tools": [CLOCK],
                "messages": [
                    *ASK,
                    ASSISTANT_CALL,
                    {"role": "user", "content": [_result("toolu_01abc")]},
                ],
            },
            "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
            "`tool_use`. When `thinking` is enabled, a final `assistant` message must start "
            "with a thinking block",
        ),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "content": [SIGNED_THOUGHT, {"type": "text", "text": "So"}],
                    },
                ]
            },
            "messages.1.content.0: When thinking is disabled, an `assistant` message in the "
            "final position cannot contain `thinking`.",
        ),
    ],
)
def test_invalid_requests_get_400_naming_the_problem(
    emulator: EmulatorProcess, control: Control, request_args: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 2000, "messages": ASK, **request_args}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(emulator).messages.create(**args)
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]
    assert control.row(MODEL, "standard")["invalid"] >= 1


def test_count_tokens_counts_tools_and_only_the_current_turns_thinking(
    emulator: EmulatorProcess, control: Control
) -> None:
    """count_tokens takes tools and thinking as the Messages request does, and both agree
    with usage.input_tokens. Tool definitions add tokens. A previous turn's thinking block is
    not counted; the current tool-use turn's is (context windows page)."""
    client = client_for(emulator)
    bare = client.messages.count_tokens(model=MODEL, messages=ASK).input_tokens
    with_tools = client.messages.count_tokens(
        model=MODEL, messages=ASK, tools=[WEATHER], thinking=THINKING
    ).input_tokens
    assert with_tools > bare + len(json.dumps(WEATHER)) // 4
    thought = SIGNED_THOUGHT
    call = {"type": "tool_use", "id": "toolu_01abc", "name": "get_time", "input": {}}
    closed = [*ASK, {"role": "assistant", "content": [thought, {"type": "text", "text": "Sunny."}]}]
    later = [*closed, {"role": "user", "content": "And tomorrow?"}]
    loop = [
        *ASK,
        {"role": "assistant", "content": [thought, call]},
        {"role": "user", "content": [_result("toolu_01abc")]},
    ]
    loop_plain = [
        *ASK,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [_result("toolu_01abc")]},
    ]

    def count(messages: list[Any], thinking: Any = THINKING) -> int:
        return client.messages.count_tokens(
            model=MODEL, messages=messages, tools=[CLOCK], thinking=thinking
        ).input_tokens

    text_only = [
        *ASK,
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert count(later) == count(text_only)  # the 2,000-byte thinking block: not counted
    assert (
        count(loop) - count(loop_plain, {"type": "disabled"}) > 500
    )  # the current turn's: counted
    message = client.messages.create(
        model=MODEL, max_tokens=2000, messages=loop, tools=[CLOCK], thinking=THINKING
    )
    assert message.usage.input_tokens == count(loop)


def test_count_tokens_validates_tools_and_thinking(
    emulator: EmulatorProcess, control: Control
) -> None:
    """count_tokens takes the same tools, tool_choice and thinking (Token counting page,
    "Count tokens in messages with tools" / "... with extended thinking"): bad ones get the
    same 400s; a budget is not compared with max_tokens (the request has none)."""
    client = client_for(emulator)
    with pytest.raises(anthropic.BadRequestError, match="String should match pattern"):
        client.messages.count_tokens(model=MODEL, messages=ASK, tools=[{**CLOCK, "name": "a b"}])
    with pytest.raises(anthropic.BadRequestError, match="greater than or equal to 1024"):
        client.messages.count_tokens(
            model=MODEL, messages=ASK, thinking={"type": "enabled", "budget_tokens": 5}
        )
    big = {"type": "enabled", "budget_tokens": 50_000}
    assert client.messages.count_tokens(model=MODEL, messages=ASK, thinking=big).input_tokens > 0


def test_plain_requests_keep_their_ground_truth(
    emulator: EmulatorProcess, control: Control
) -> None:
    """A plain text request: its first text token is its first token, all tokens text."""
    with client_for(emulator).messages.stream(model=MODEL, max_tokens=100, messages=ASK) as stream:
        message = stream.get_final_message()
    served = control.served(stream.response.headers["request-id"])
    assert served["first_text_ns"] == served["first_token_ns"] > 0
    assert served["text_tokens"] == served["output_tokens"] == message.usage.output_tokens == 20
    assert served["thinking_tokens"] == served["tool_use_tokens"] == 0


def test_a_cut_thinking_stream_counts_what_was_sent(
    emulator: EmulatorProcess, control: Control
) -> None:
    """A connection cut mid-answer: the served tokens are those sent, split by kind."""
    configure(control)
    control.configure({"faults": {"connection_cut_rate": 1.0}}).raise_for_status()
    with (
        pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)),
        client_for(emulator).messages.stream(
            model=MODEL, max_tokens=2000, thinking=THINKING, messages=ASK
        ) as stream,
    ):
        for _ in stream:
            pass
    record = control.http.get("/_emulator/served").json()[-1]
    assert record["outcome"] == "cut"
    assert 0 < record["output_tokens"] < 122
    parts = record["thinking_tokens"] + record["text_tokens"] + record["tool_use_tokens"]
    assert parts == record["output_tokens"]


@pytest.mark.slow
def test_two_processes_serve_thinking_and_tools_with_their_ground_truth() -> None:
    """``--processes 2``: /_emulator/served merges both workers' records with the new
    fields."""
    config = {
        **QUICK_CONFIG,
        "thinking_and_tools": {
            "thinking_budget_percent": {"kind": "fixed", "value": 10},
            "tool_call_probability": 1.0,
        },
    }
    with EmulatorProcess(config=config, processes=2) as emulator:
        control = Control(emulator.base_url)
        ids = []
        for _ in range(20):  # a new connection each: until both workers have served some
            with (
                client_for(emulator) as client,
                client.messages.stream(
                    model=MODEL, max_tokens=2000, thinking=THINKING, tools=[WEATHER], messages=ASK
                ) as stream,
            ):
                message = stream.get_final_message()
            assert message.stop_reason == "tool_use" and message.content[0].type == "thinking"
            ids.append((stream.response.headers["request-id"], message.usage.output_tokens))
            stats = control.stats()
            if len(ids) >= 4 and all(p["totals"]["received"] for p in stats["processes"]):
                break
        assert all(p["totals"]["received"] for p in stats["processes"])
        assert stats["totals"]["thinking_tokens"] == len(ids) * 102
        thinking = tool_use = 0
        for request_id, output_tokens in ids:
            served = control.served(request_id)
            assert served["thinking_tokens"] == 102 and served["tool_use_tokens"] > 0
            total = served["thinking_tokens"] + served["text_tokens"] + served["tool_use_tokens"]
            assert total == served["output_tokens"] == output_tokens
            thinking += served["thinking_tokens"]
            tool_use += served["tool_use_tokens"]
            assert (
                served["first_text_ns"] == 0 or served["first_text_ns"] > served["first_token_ns"]
            )
        assert (stats["totals"]["thinking_tokens"], stats["totals"]["tool_use_tokens"]) == (
            thinking,
            tool_use,
        )
