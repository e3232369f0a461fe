"""Conversations, tool use and extended thinking through real Locust runs against the emulator.

The shipped ``workloads/agentic.yaml`` is run as it is (the emulator made quick); every request
is then compared with the emulator's own account of it (``/_emulator/served``): the first token
of any kind and the first text token (extended thinking page, "Streaming thinking": thinking
deltas come before the text; platform.claude.com/docs/en/build-with-claude/extended-thinking,
as of 2026-11), the thinking / text / tool-input tokens (usage.output_tokens is their sum, the
harness shares it out by characters), and the tool_result turns (tool use page, "Handling tool
use and tool result content blocks": each tool_use id answered in the next user message; the
emulator refuses a request that does not).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import QUICK_MODELS
from .runs import run_locust, settled_emulator

# Quick: decode at 4,000 tokens/s, thinking 5-15% of the budget, a tool call most times.
FAST_MODELS = {
    name: {**profile, "decode_tokens_per_s": 4000} for name, profile in QUICK_MODELS.items()
}
AGENTIC_EMULATOR: dict[str, Any] = {
    "models": FAST_MODELS,
    "output_tokens": {"kind": "uniform", "min": 20, "max": 60},
    "thinking_and_tools": {
        "thinking_budget_percent": {"kind": "uniform", "min": 5, "max": 15},
        "tool_call_probability": 0.8,
    },
}
TOLERANCE_NS = 2_000_000  # 2 ms


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _served(base_url: str) -> dict[str, dict[str, Any]]:
    _, served = settled_emulator(base_url)
    return {s["request_id"]: s for s in served}


@pytest.mark.slow
@pytest.mark.timing
def test_agentic_workload_splits_ttft_tokens_and_tool_turns_as_served(tmp_path: Path) -> None:
    records_path = tmp_path / "records.jsonl"
    with EmulatorProcess(config=AGENTIC_EMULATOR, seed=5) as emulator:
        result, data = run_locust(
            tmp_path, "-u", "4", "-r", "4", "-t", "6s", "--workload", "workloads/agentic.yaml",
            "--target-url", emulator.base_url, "--records", str(records_path),
            env={"ANTHROPIC_API_KEY": "test-key"},
        )  # fmt: skip
        served = _served(emulator.base_url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    assert data["accounting"]["mismatches"] == [], data["accounting"]
    records = _records(records_path)
    done = [r for r in records if r["outcome"] == "ok"]
    assert len(done) >= 8, len(done)
    assert all(r["session_id"] and r["turn"] >= 1 for r in records)
    thinking = text = calls = with_text = 0
    for record in done:
        truth = served[record["request_id"]]
        label = (record["request_id"], record["turn"])
        # TTFT of any kind (a thinking delta first) and TTFT-text, against the served stamps
        assert abs(record["t_first_token"] - truth["first_token_ns"]) <= TOLERANCE_NS, label
        if truth["first_text_ns"]:
            assert abs(record["t_first_text"] - truth["first_text_ns"]) <= TOLERANCE_NS, label
            with_text += 1
        else:  # a tool call without text before it: no first text token at all
            assert record["t_first_text"] == 0, label
        # the output tokens by kind, shared out by characters, against the served counts
        assert record["output_tokens"] == truth["output_tokens"], label
        for kind in ("thinking_tokens", "text_tokens", "tool_use_tokens"):
            assert abs(record[kind] - truth[kind]) <= 1, (label, kind)
        thinking += record["thinking_tokens"]
        text += record["text_tokens"]
        calls += record["tool_calls"]
    assert thinking > 0 and text > 0 and calls > 0 and with_text > 0
    # Every answer that called a tool (and was not the run's last word) got its tool_result
    # turn in the same conversation, stamped with the end of the answer that called it.
    by_session: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_session.setdefault(record["session_id"], []).append(record)
    answered = 0
    for turns in by_session.values():
        turns.sort(key=lambda r: r["turn"])
        assert [r["turn"] for r in turns] == list(range(1, len(turns) + 1))
        for before, after in itertools.pairwise(turns):
            if before["tool_calls"]:
                assert after["t_tool_call_end"] == before["t_end"]
                answered += 1
                if after["outcome"] == "ok":  # tool latency (>= 20 ms) and its TTFT inside
                    assert after["t_first_token"] - before["t_end"] >= 20_000_000
    assert answered > 0
    # The summary's figures are these records' (thinking before text: TTFT-text is later).
    total = data["total"]
    content = total["content"]
    assert content["thinking_tokens"] == sum(r["thinking_tokens"] for r in records)
    assert content["tool_calls"] == sum(r["tool_calls"] for r in records)
    assert content["ttft_text_ms"]["p50"] > total["ttft_ms"]["p50"]
    assert content["tool_round_trip_ms"]["p50"] >= 20
    assert "content (TTFT-text" in result.stdout + result.stderr


CONVERSATION: dict[str, Any] = {
    "name": "conversation",
    "models": [{"model": "claude-sonnet-4-6"}],
    "prompt_tokens": {"kind": "fixed", "value": 1500},
    "max_tokens": {"kind": "fixed", "value": 256},
    "conversation": {
        "turns": {"kind": "fixed", "value": 4},
        "user_tokens": {"kind": "fixed", "value": 200},
    },
}


@pytest.mark.slow
def test_the_cached_share_grows_turn_by_turn(tmp_path: Path) -> None:
    """Prompt caching page ("Caching multi-turn conversations", platform.claude.com/docs/en/
    build-with-claude/prompt-caching, as of 2026-11): with the breakpoint on the last block of
    each request, the previous request's prompt is read from the cache and only the new turn is
    written; the minimum cacheable prompt of Sonnet 4.6 is 1,024 tokens."""
    workload = tmp_path / "conversation.yaml"
    workload.write_text(yaml.safe_dump(CONVERSATION))
    config = tmp_path / "emulator.yaml"
    config.write_text(
        yaml.safe_dump({"models": FAST_MODELS, "output_tokens": {"kind": "fixed", "value": 40}})
    )
    result, data = run_locust(
        tmp_path, "-u", "3", "-r", "3", "-t", "4s", "--workload", str(workload),
        "--emulator-config", str(config),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    assert data["accounting"]["mismatches"] == [], data["accounting"]
    turns = data["by_turn"]
    assert [t["turn"] for t in turns] == [1, 2, 3, 4]
    shares = [t["cache_read_share"] for t in turns]
    assert shares[0] == 0  # a conversation's first prompt is its own
    assert all(a < b for a, b in itertools.pairwise(shares)), shares
    assert shares[-1] > 0.8, shares
    # cost per turn falls as reads (0.1x) replace writes (1.25x)
    assert (
        turns[-1]["cost_usd"] / turns[-1]["requests"] < turns[0]["cost_usd"] / turns[0]["requests"]
    )
    assert "by turn" in result.stdout + result.stderr
