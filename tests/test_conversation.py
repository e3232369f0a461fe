"""Conversations without a server: the state machine (loadkit.conversation), content mode's
rebuilding of an answer from raw SSE (loadkit.content), and the workload's schema errors."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from loadkit import conversation
from loadkit.aggregate import Aggregate
from loadkit.client import RequestSpec
from loadkit.content import Answer
from loadkit.prompts import PromptFactory
from loadkit.record import Outcome, ResultRecord
from loadkit.sinks.influxdb import LineFormatter
from loadkit.summary import group_figures
from loadkit.workload import WorkloadError, parse_workload

MODEL = "claude-sonnet-4-5"


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _start(index: int, block: dict[str, Any]) -> bytes:
    return _sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _stop(index: int) -> bytes:
    return _sse("content_block_stop", {"type": "content_block_stop", "index": index})


def thinking_then_tool() -> list[bytes]:
    """The streamed answer of the extended thinking page's tool-use example, in the event shapes
    of the streaming page ("Streaming request with extended thinking", "Streaming request with
    tool use", platform.claude.com/docs/en/build-with-claude/streaming, as of 2026-11): a
    thinking block with one signature_delta, a text block, a tool_use block whose input comes
    in input_json_delta pieces."""
    return [
        _start(0, {"type": "thinking", "thinking": ""}),
        _delta(0, {"type": "thinking_delta", "thinking": "The user wants the weather, "}),
        _delta(0, {"type": "thinking_delta", "thinking": "so I call the tool."}),
        _delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}),
        _stop(0) + _start(1, {"type": "text", "text": ""}),
        _delta(1, {"type": "text_delta", "text": "Let me check."}),
        _stop(1),
        _start(2, {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}),
        _delta(2, {"type": "input_json_delta", "partial_json": ""}),
        _delta(2, {"type": "input_json_delta", "partial_json": '{"location": "San Fra'}),
        _delta(2, {"type": "input_json_delta", "partial_json": 'ncisco, CA"}'}),
        _stop(2),
    ]


def test_an_answer_is_rebuilt_from_its_raw_events() -> None:
    answer = Answer()
    for now, chunk in enumerate(thinking_then_tool(), start=1):
        answer.feed(chunk, now * 1000)
    content = answer.content()
    assert [b["type"] for b in content] == ["thinking", "text", "tool_use"]
    assert content[0]["thinking"] == "The user wants the weather, so I call the tool."
    assert content[0]["signature"] == "EqQBCgIYAhIM1gbcDa9GJwZA"
    assert content[1] == {"type": "text", "text": "Let me check."}
    assert content[2]["input"] == {"location": "San Francisco, CA"}
    assert answer.t_first_text == 6000  # the sixth read held the first text_delta
    record = ResultRecord(MODEL, "standard", "t", 0, 100, output_tokens=30)
    answer.settle(record)
    assert record.tool_calls == 1 and record.parsed_content
    thinking, text, json_chars = (
        len("The user wants the weather, so I call the tool."),
        len("Let me check."),
        len('{"location": "San Francisco, CA"}'),
    )
    chars = (thinking, text, json_chars)
    assert record.thinking_tokens == round(30 * chars[0] / sum(chars))
    assert record.tool_use_tokens == round(30 * chars[2] / sum(chars))
    assert record.thinking_tokens + record.text_tokens + record.tool_use_tokens == 30


def test_a_tool_call_cut_by_max_tokens_is_left_out() -> None:
    answer = Answer()
    for chunk in thinking_then_tool()[:-2]:  # the last JSON piece and the stop never came
        answer.feed(chunk, 1)
    answer.feed(_stop(2), 2)
    assert [b["type"] for b in answer.content()] == ["thinking", "text"]
    assert "not JSON" in answer.broken


def _workload(**extra: Any) -> Any:
    data: dict[str, Any] = {
        "models": [{"model": MODEL}],
        "prompt_tokens": {"kind": "fixed", "value": 500},
        "max_tokens": {"kind": "fixed", "value": 2048},
        "conversation": {
            "turns": {"kind": "fixed", "value": 2},
            "think_time_ms": {"kind": "fixed", "value": 1500},
            "user_tokens": {"kind": "fixed", "value": 40},
        },
        **extra,
    }
    return parse_workload(data, "test")


def _prompts() -> PromptFactory:
    prompts = PromptFactory(7)
    prompts.calibrate(MODEL, lambda model, messages, system: 10 + len(messages[0]["content"]) // 4)
    return prompts


def _ok(t_end: int, input_tokens: int = 500) -> ResultRecord:
    return ResultRecord(
        MODEL, "standard", "t", 0, 2048, t_end=t_end, input_tokens=input_tokens, output_tokens=30
    )


def _answered(spec: RequestSpec, chunks: list[bytes]) -> Answer:
    assert spec.answer is not None
    for chunk in chunks:
        spec.answer.feed(chunk, 1)
    return spec.answer


def _text_answer(text: str) -> list[bytes]:
    return [
        _start(0, {"type": "text", "text": ""}),
        _delta(0, {"type": "text_delta", "text": text}),
        _stop(0),
    ]


def test_turns_tool_round_trips_and_the_moving_breakpoint() -> None:
    workload = _workload(
        thinking={"budget_tokens": 1024},
        tools={"preset": "agent", "latency_ms": {"kind": "fixed", "value": 250}},
    )
    first = RequestSpec(
        MODEL, "standard", 2048, [{"role": "user", "content": "hi"}], output_target=100
    )
    state = conversation.start(first, workload, _prompts(), random.Random(1))
    assert state.turns == 2
    step = state.next_step()
    assert step is not None and step.wait_s == 0 and step.spec.turn == 1
    assert step.spec.output_target == 100  # its instruction is in the first message
    spec = step.spec
    assert spec.thinking_budget == 1024 and spec.tools and spec.tool_choice == {"type": "auto"}
    assert spec.messages[-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    # the answer calls a tool: a tool_result turn follows after the tool's latency
    state.take(_ok(t_end=5_000), _answered(spec, thinking_then_tool()))
    step = state.next_step()
    assert step is not None and step.wait_s == 0.25 and step.spec.turn == 2
    assert step.spec.output_target == 0  # no instruction in the later messages
    assert step.spec.t_tool_call_end == 5_000
    messages = step.spec.messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][0]["type"] == "thinking"  # kept, with its signature
    assert messages[1]["content"][0]["signature"]
    result = messages[2]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_01"
    assert result["cache_control"] == {"type": "ephemeral"}
    # the breakpoint moved: the first request's user block has none now
    assert "cache_control" not in messages[0]["content"][-1]
    assert sum("cache_control" in b for m in messages for b in m["content"]) == 1
    # a text answer: the second (last) user message after the think time
    state.take(_ok(t_end=9_000), _answered(step.spec, _text_answer("Sunny.")))
    step = state.next_step()
    assert step is not None and step.wait_s == 1.5 and step.spec.turn == 3
    assert step.spec.t_tool_call_end == 0
    assert step.spec.messages[-1]["role"] == "user"
    assert step.spec.prompt_tokens_target == 500 + 30 + 40  # what came back, plus the new text
    state.take(_ok(t_end=12_000), _answered(step.spec, _text_answer("Bye.")))
    assert state.next_step() is None and state.ended == "done"


def test_a_failed_turn_ends_the_conversation() -> None:
    state = conversation.start(
        RequestSpec(MODEL, "standard", 2048, [{"role": "user", "content": "hi"}]),
        _workload(),
        _prompts(),
        random.Random(1),
    )
    step = state.next_step()
    assert step is not None
    failed = _ok(t_end=1)
    failed.outcome = Outcome.OVERLOADED
    state.take(failed, step.spec.answer)
    assert state.next_step() is None and state.ended == "failed: overloaded"


def test_out_of_tool_round_trips_the_results_go_with_the_next_user_message() -> None:
    workload = _workload(tools={"preset": "agent", "max_calls_per_turn": 1})
    first = RequestSpec(MODEL, "standard", 2048, [{"role": "user", "content": "hi"}])
    state = conversation.start(first, workload, _prompts(), random.Random(1))
    for expected_turn in (1, 2):
        step = state.next_step()
        assert step is not None and step.spec.turn == expected_turn
        state.take(_ok(t_end=expected_turn), _answered(step.spec, thinking_then_tool()[4:]))
    step = state.next_step()  # the round trip allowed is used: results + a new user text
    assert step is not None
    kinds = [b["type"] for b in step.spec.messages[-1]["content"]]
    assert kinds == ["tool_result", "text"]
    # a new user message: one more round trip allowed, then the last call goes unanswered
    state.take(_ok(t_end=3), _answered(step.spec, thinking_then_tool()[4:]))
    step = state.next_step()
    assert step is not None and step.spec.turn == 4
    assert [b["type"] for b in step.spec.messages[-1]["content"]] == ["tool_result"]
    state.take(_ok(t_end=4), _answered(step.spec, thinking_then_tool()[4:]))
    assert state.next_step() is None
    assert state.ended == "done (tool call left unanswered: max_calls_per_turn)"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"thinking": {"budget_tokens": 4096}}, "thinking.budget_tokens (4096) must be below"),
        ({"thinking": {"budget_tokens": 512}}, "greater than or equal to 1024"),
        (
            {"thinking": {"budget_tokens": 1024}, "temperature": 0.5},
            "does not take a temperature",
        ),
        (
            {
                "thinking": {"budget_tokens": 1024},
                "tools": {"preset": "agent", "tool_choice": "any"},
            },
            "tool_choice auto or none, not any",
        ),
        ({"tools": {}}, "give either definitions or a preset"),
        (
            {"tools": {"preset": "agent", "tool_choice": {"type": "tool", "name": "x"}}},
            "tool_choice names 'x'",
        ),
        (
            {"tools": {"definitions": [{"name": "f", "input_schema": {"type": "string"}}]}},
            '"type": "object"',
        ),
        (
            {"conversation": {"turns": {"kind": "uniform", "min": 0, "max": 3}}},
            "can draw 0 turns",
        ),
        (
            {"conversation": {"turns": {"kind": "lognormal", "median": 3, "sigma": 1, "min": 1}}},
            "without max can draw any size",
        ),
        (
            {"conversation": {"turns": {"kind": "fixed", "value": 900}}},
            "longest conversation reaches",
        ),
    ],
)
def test_schema_errors_name_the_problem(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkloadError, match="invalid workload test") as caught:
        _workload(**extra)
    assert message in str(caught.value)


def test_content_and_turn_figures_merge_across_workers() -> None:
    """Two workers' aggregates, sent as wire data, merge into the figures one process would
    have computed from all the records (totals added, sketches merged, turn slices kept)."""

    def record(turn: int, thinking: int, first_text_ms: int, round_trip_ms: int) -> ResultRecord:
        r = ResultRecord(MODEL, "standard", "t", 0, 2048, turn=turn, session_id="s")
        r.t_send, r.t_first_token, r.t_end = 1_000_000_000, 1_050_000_000, 1_900_000_000
        r.t_first_text = r.t_send + first_text_ms * 1_000_000
        r.t_tool_call_end = r.t_first_token - round_trip_ms * 1_000_000 if round_trip_ms else 0
        r.parsed_content, r.output_tokens = True, thinking + 20
        r.thinking_tokens, r.text_tokens, r.tool_calls = thinking, 20, turn % 2
        r.input_tokens, r.cache_read_input_tokens = 100, 1000 * turn
        return r

    records = [record(turn, 50 * turn, 100 + 10 * turn, 30 * (turn - 1)) for turn in (1, 2, 3)]
    workers, alone = [Aggregate(), Aggregate()], Aggregate()
    for i, r in enumerate(records):
        workers[i % 2].add(r, slices=[("turn", r.turn)])
        alone.add(r, slices=[("turn", r.turn)])
    master = Aggregate()
    for worker in workers:
        master.merge_wire(worker.take_wire())
    merged = group_figures(master.total(), 1.0)["content"]
    assert merged == group_figures(alone.total(), 1.0)["content"]
    assert merged["thinking_tokens"] == 300 and merged["tool_calls"] == 2
    assert merged["tool_round_trip_ms"]["p50"] == pytest.approx(30, rel=0.02)
    assert sorted(master.slices("turn")) == [1, 2, 3]


def test_interleaved_thinking_with_tools_may_exceed_max_tokens() -> None:
    """Extended thinking page, "Interleaved thinking" (as of 2026-11): with interleaved
    thinking and tools, budget_tokens can exceed max_tokens (the whole context window)."""
    thinking = {"budget_tokens": 4096, "interleaved": True}
    workload = _workload(thinking=thinking, tools={"preset": "agent"})
    assert workload.thinking is not None and workload.thinking.interleaved
    with pytest.raises(WorkloadError, match="must be below max_tokens"):
        _workload(thinking=thinking)  # without tools the budget stays below max_tokens


def test_the_influxdb_point_carries_the_content_fields() -> None:
    record = ResultRecord(MODEL, "standard", "t", 0, 2048, turn=3, session_id="s")
    record.t_send, record.t_first_token, record.t_end = 1_000_000, 51_000_000, 90_000_000
    plain = LineFormatter("run", "w").request_line(record)
    assert "turn=3i" in plain and "thinking_tokens" not in plain
    record.parsed_content, record.thinking_tokens, record.tool_calls = True, 40, 1
    record.t_first_text, record.t_tool_call_end = 81_000_000, 11_000_000
    line = LineFormatter("run", "w").request_line(record)
    fields = dict(part.split("=") for part in line.split(" ")[1].split(","))
    assert fields["thinking_tokens"] == "40i" and fields["tool_calls"] == "1i"
    assert float(fields["ttft_text_ms"]) == 80.0
    assert float(fields["tool_round_trip_ms"]) == 40.0
