"""Output-length targets: the instruction added to the prompt, the workload's bounds, and the
adherence figures of a real run, checked against its per-request records."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.output_target import OutputTargetError, instruct, instruction, words_for
from loadkit.workload import WorkloadError, parse_workload

from . import adherence
from .runs import run_locust

FAST = {"ttft_base_ms": 40, "prefill_tokens_per_s": 100_000, "decode_tokens_per_s": 2000}
FAST |= {"ttft_jitter": 0.0, "decode_jitter": 0.0}
EMULATOR: dict[str, Any] = {
    "models": {m: FAST for m in ("claude-haiku-4-5", "claude-sonnet-4-6")},
    # replies of any length up to 300 tokens whatever the prompt asks: some near the target,
    # some past it (cut by max_tokens), some short
    "output_tokens": {"kind": "uniform", "min": 20, "max": 300},
}


def test_instruct_asks_for_words_at_three_quarters_of_the_target() -> None:
    messages = [
        {"role": "user", "content": "Tell me about tides."},
        {"role": "assistant", "content": "Which part?"},
        {"role": "user", "content": "Why there are two a day."},
    ]
    kept = copy.deepcopy(messages)
    out = instruct(messages, 200)
    assert messages == kept  # the caller's (a dataset's shared) messages are never changed
    assert out[:2] == messages[:2]
    assert out[2] == {
        "role": "user",
        "content": "Why there are two a day.\n\nPlease answer in about 150 words: "
        "no shorter, and not much longer.",
    }
    assert [words_for(t) for t in (1, 2, 3, 4, 133, 1000)] == [1, 2, 2, 3, 100, 750]
    assert instruction(1) == "Please answer in about 1 word: no shorter, and not much longer."
    assert instruct(messages, 0) is messages  # no target, nothing added


def test_instruct_adds_a_text_block_after_blocks_and_keeps_their_cache_marks() -> None:
    block = {
        "type": "text",
        "text": "A long shared context.",
        "cache_control": {"type": "ephemeral"},
    }
    out = instruct([{"role": "user", "content": [block]}], 40)
    assert out[0]["content"] == [block, {"type": "text", "text": instruction(40)}]
    assert "about 30 words" in instruction(40)


@pytest.mark.parametrize(
    ("messages", "target", "message"),
    [
        ([{"role": "user", "content": "x"}], -1, "output target must be >= 0, not -1"),
        ([], 10, "an output target needs a user message last"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            10,
            "an output target needs a user message last",
        ),
        ([{"role": "user", "content": None}], 10, "must be a string or a list of blocks"),
    ],
)
def test_instruct_refuses_what_it_cannot_extend(
    messages: list[dict[str, Any]], target: int, message: str
) -> None:
    with pytest.raises(OutputTargetError, match=message):
        instruct(messages, target)


def _workload(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "models": [{"model": "claude-haiku-4-5"}, {"model": "claude-sonnet-4-6"}],
        "max_tokens": {"kind": "uniform", "min": 200, "max": 400},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _workload(output_tokens_target={"kind": "fixed", "value": 201}),
            "output_tokens_target: can draw 201, above the max_tokens models.0 can draw (200)",
        ),
        (
            _workload(
                models=[
                    {"model": "claude-haiku-4-5"},
                    {
                        "model": "claude-sonnet-4-6",
                        "max_tokens": {"kind": "fixed", "value": 64},
                        "output_tokens_target": {"kind": "uniform", "min": 10, "max": 100},
                    },
                ]
            ),
            "models.1.output_tokens_target: can draw 100, above the max_tokens models.1 can draw",
        ),
        (
            _workload(output_tokens_target={"kind": "lognormal", "median": 100, "sigma": 1}),
            "output_tokens_target: a lognormal distribution without max needs a max",
        ),
        (
            _workload(output_tokens_target={"kind": "uniform", "min": 0, "max": 100}),
            "output_tokens_target: can draw 0; must be >= 1",
        ),
    ],
)
def test_targets_outside_max_tokens_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkloadError, match=re.escape(message)):
        parse_workload(data, "w.yaml")


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_adherence_figures_equal_what_the_records_say(tmp_path: Path) -> None:
    """A run whose Haiku requests ask for 60-160 tokens (Sonnet's ask for nothing), replies of
    20-300 tokens capped at 150: per group and in total, the summary's adherence figures are
    those computed from the per-request records; the printed table shows them."""
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(EMULATOR))
    workload = {
        "name": "targets",
        "models": [
            {
                "model": "claude-haiku-4-5",
                "weight": 2,
                "output_tokens_target": {"kind": "uniform", "min": 60, "max": 150},
            },
            {"model": "claude-sonnet-4-6"},
        ],
        "prompt_tokens": {"kind": "uniform", "min": 50, "max": 200},
        "max_tokens": {"kind": "fixed", "value": 150},
    }
    (tmp_path / "workload.yaml").write_text(yaml.safe_dump(workload))
    records_path = tmp_path / "records.jsonl"
    result, summary = run_locust(
        tmp_path, "-u", "6", "-r", "6", "-t", "3s", "--workload", str(tmp_path / "workload.yaml"),
        "--emulator-config", str(tmp_path / "emulator.yaml"), "--records", str(records_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary is not None
    records = _records(records_path)
    haiku = [r for r in records if r["model"] == "claude-haiku-4-5"]
    sonnet = [r for r in records if r["model"] == "claude-sonnet-4-6"]
    assert len(haiku) > 20 and sonnet
    assert all(60 <= r["output_target"] <= 150 for r in haiku)
    assert all(r["output_target"] == 0 for r in sonnet)
    groups = {g["model"]: g for g in summary["groups"]}
    adherence.check(groups["claude-haiku-4-5"].get("output_target"), haiku)
    assert "output_target" not in groups["claude-sonnet-4-6"]
    adherence.check(summary["total"].get("output_target"), records)
    figures = summary["total"]["output_target"]
    # the replies were drawn so that each kind of answer occurs
    assert 0 < figures["within_20pct"] < 1 and 0 < figures["at_max_tokens"] < 1
    printed = result.stderr.splitlines()
    start = next(i for i, x in enumerate(printed) if x.startswith("output-length targets"))
    line = next(x for x in printed[start:] if x.startswith("all "))
    assert line.split()[1:] == [
        str(figures["requests"]),
        str(figures["measured"]),
        *(f"{figures['ratio'][p]:.2f}" for p in ("p10", "p50", "p90")),
        f"{figures['within_20pct']:.1%}",
        f"{figures['at_max_tokens']:.1%}",
    ]
