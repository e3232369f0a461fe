"""Trace files: both formats read and checked in full, errors that name the file, line and
field, cache breakpoints chosen from the whole trace, prompts of the recorded sizes, records
made into a trace, and the shipped examples (no Locust: tests/test_trace_runs.py replays)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadkit.emulator.prompt import analyse_prompt
from loadkit.trace import TraceError, load_trace
from loadkit.trace_prompts import TracePrompts
from loadkit.trace_records import trace_from_records

ROOT = Path(__file__).resolve().parent.parent
HAIKU = "claude-haiku-4-5"


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def emulator_count(model: str, messages: list[dict[str, Any]], system: Any) -> int:
    """The emulator's own token count (the function its count_tokens endpoint answers with)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system is not None:
        body["system"] = system
    return analyse_prompt(body, None).tokens


def test_loadkit_format_reads_every_field_in_time_order(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            {"timestamp_ms": 1500, "model": HAIKU, "input_tokens": 800, "max_tokens": 100},
            "",  # blank lines are skipped
            {
                "timestamp_ms": 1000, "model": "claude-opus-4-6", "speed": "fast",
                "messages": [{"role": "user", "content": "hi"}], "system": "be brief",
                "max_tokens": 50, "output_tokens": 20, "session_id": "s1",
            },
            {
                "timestamp_ms": 1500, "model": HAIKU, "input_tokens": 6000, "max_tokens": 10,
                "prefix_id": "p", "prefix_tokens": 5000,
            },
        ],
    )  # fmt: skip
    trace = load_trace(path)
    assert trace.format == "loadkit" and len(trace.entries) == 3
    first, second, third = trace.entries
    assert [e.offset_ms for e in trace.entries] == [0, 500, 500]  # from the first entry
    assert [e.line for e in trace.entries] == [3, 1, 4]  # equal times keep the file's order
    assert (first.speed, first.output_target, first.session_id) == ("fast", 20, "s1")
    assert first.messages == [{"role": "user", "content": "hi"}] and first.system == "be brief"
    assert (second.speed, second.input_tokens, second.output_target) == ("standard", 800, 0)
    assert (third.prefix_id, third.prefix_tokens) == ("p", 5000)
    assert trace.period_ms == pytest.approx(500 * 3 / 2)  # the span plus one mean gap
    burst = write_lines(tmp_path / "burst.jsonl", [GOOD, GOOD])
    assert load_trace(burst).period_ms == 0  # all at once: nothing to loop on


GOOD = {"timestamp_ms": 0, "model": HAIKU, "input_tokens": 100, "max_tokens": 10}


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("{not json", ":2: not valid JSON"),
        ("[1, 2]", ":2: expected a JSON object, not list"),
        ({**GOOD, "max_tokens": "x"}, ":2: max_tokens: Input should be"),
        ({k: v for k, v in GOOD.items() if k != "max_tokens"}, ":2: max_tokens: Field required"),
        ({**GOOD, "timestamp_ms": -1}, ":2: timestamp_ms: Input should be greater than"),
        ({**GOOD, "model": "claude-nope"}, ":2: model: unknown model 'claude-nope'"),
        ({**GOOD, "speed": "turbo"}, ":2: speed: Input should be 'standard' or 'fast'"),
        ({**GOOD, "speed": "fast"}, ":2: speed fast: fast mode is offered on claude-opus-4-6"),
        ({**GOOD, "colour": 1}, ":2: colour: Extra inputs are not permitted"),
        ({**GOOD, "messages": [{"role": "user", "content": "x"}]}, ":2: give either input_tokens"),
        ({**GOOD, "output_tokens": 11}, ":2: output_tokens (11) is above max_tokens (10)"),
        ({**GOOD, "prefix_id": "p"}, ":2: prefix_id and prefix_tokens go together"),
        ({**GOOD, "prefix_id": "p", "prefix_tokens": 100}, ":2: prefix_tokens (100) must be less"),
        (
            {**GOOD, "input_tokens": None, "messages": [{"content": "x"}]},
            ":2: messages: message 0 needs a role",
        ),
    ],
)
def test_a_bad_line_is_named_with_its_field(tmp_path: Path, bad: Any, expected: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(TraceError) as caught:
        load_trace(path)
    assert f"{path}{expected}" in str(caught.value)


MOONCAKE = {"timestamp": 0, "input_length": 1100, "output_length": 20, "hash_ids": [1, 2, 3]}


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({**MOONCAKE, "input_length": 1024}, ":2: hash_ids: 3 blocks of 512 tokens do not fit"),
        ({**MOONCAKE, "input_length": 1537}, "(the last block would hold 513 tokens"),
        ({**MOONCAKE, "text_input": "hi"}, ":2: text_input: Extra inputs are not permitted"),
        ({k: v for k, v in MOONCAKE.items() if k != "timestamp"}, ":2: timestamp: Field required"),
        ({**MOONCAKE, "hash_ids": [1, "a", 3]}, ":2: hash_ids.1: Input should be a valid integer"),
    ],
)
def test_a_bad_mooncake_line_is_named_with_its_field(
    tmp_path: Path, bad: Any, expected: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [MOONCAKE, bad])
    with pytest.raises(TraceError) as caught:
        load_trace(path, model=HAIKU)
    assert expected in str(caught.value) and str(path) in str(caught.value)


def test_formats_are_told_apart_per_file_or_named(tmp_path: Path) -> None:
    mooncake = write_lines(tmp_path / "m.jsonl", [MOONCAKE, {**MOONCAKE, "timestamp": 250}])
    loadkit = write_lines(tmp_path / "l.jsonl", [GOOD])
    trace = load_trace(mooncake, model=HAIKU, speed="standard")
    assert trace.format == "mooncake" and [e.offset_ms for e in trace.entries] == [0, 250]
    entry = trace.entries[0]
    # AIPerf sends output_length as max_tokens; loadkit also asks for it as the target
    assert (entry.model, entry.max_tokens, entry.output_target) == (HAIKU, 20, 20)
    assert (entry.hash_ids, entry.last_block_tokens) == ((1, 2, 3), 1100 - 2 * 512)
    assert load_trace(loadkit).format == "loadkit"
    with pytest.raises(TraceError, match=r"l\.jsonl:1: timestamp: Field required"):
        load_trace(loadkit, "mooncake", model=HAIKU)
    with pytest.raises(TraceError, match="a Mooncake trace names no model"):
        load_trace(mooncake)
    with pytest.raises(TraceError, match="fast mode is offered on claude-opus-4-6 only, not"):
        load_trace(mooncake, model=HAIKU, speed="fast")
    assert load_trace(mooncake, model="claude-opus-4-6", speed="fast").entries[0].speed == "fast"
    unknown = write_lines(tmp_path / "u.jsonl", [{"prompt": "x"}])
    with pytest.raises(TraceError, match=r"u\.jsonl:1: cannot tell the trace format"):
        load_trace(unknown)
    empty = write_lines(tmp_path / "e.jsonl", [""])
    with pytest.raises(TraceError, match="has no entries"):
        load_trace(empty)


def mooncake_line(ids: list[int], last: int = 512, t: int = 0) -> dict[str, Any]:
    return {
        "timestamp": t, "input_length": (len(ids) - 1) * 512 + last, "output_length": 10,
        "hash_ids": ids,
    }  # fmt: skip


def test_breakpoints_go_where_prefixes_are_shared(tmp_path: Path) -> None:
    """Prompt caching page (platform.claude.com/docs/en/build-with-claude/prompt-caching, as
    of 2026-11): only prefixes ending at a cache_control breakpoint are cached, at most 4
    per request, none shorter than the model's minimum (4,096 tokens for Haiku 4.5, 1,024 for
    Sonnet 4.6: 8 and 2 blocks of 512)."""
    system = list(range(10))
    lines = [
        mooncake_line([*system, 10], last=300),  # 0: shares the system's 10 blocks
        mooncake_line([*system, 11, 12], last=100),  # 1: and 11 with entry 3
        mooncake_line([50, 51], last=100),  # 2: shares 1 block with 5: too short to cache
        mooncake_line([*system, 11, 12, 13], last=200),  # 3: its 12 is full (not 1's)
        mooncake_line([*system, 10, 14], last=50),  # 4: its 10 is full (not 0's)
        mooncake_line([50, 51, 52], last=10),  # 5
        mooncake_line([*system, 11, 12, 13], last=200),  # 6: the same prompt as 3
    ]
    path = write_lines(tmp_path / "m.jsonl", lines)
    trace = load_trace(path, model=HAIKU)
    points = {entry.line: entry.breakpoints for entry in trace.entries}
    assert points == {
        1: (10,),
        2: (10, 11),
        3: (),
        4: (10, 11, 13),
        5: (10,),
        6: (),
        7: (10, 11, 13),
    }
    sonnet = load_trace(path, model="claude-sonnet-4-6")  # a minimum of 1,024: 2 blocks
    assert sonnet.entries[2].breakpoints == () and sonnet.entries[5].breakpoints == ()
    # 6 branch points: the shallowest and the 3 deepest are kept
    deep = [mooncake_line(list(range(k))) for k in range(9, 15)]
    deep.append(mooncake_line([*range(14), 99]))
    trace = load_trace(write_lines(tmp_path / "d.jsonl", deep), model=HAIKU)
    assert trace.entries[-1].breakpoints == (9, 12, 13, 14)


def test_prompts_have_the_recorded_sizes_and_equal_ids_equal_text(tmp_path: Path) -> None:
    """Each hash block is 512 tokens as the emulator counts them (the last one the rest of
    input_length), equal ids are equal text in every process (any seed), and cache_control
    sits on the blocks the breakpoints end with."""
    system = list(range(10))
    lines = [mooncake_line([*system, 10], last=300), mooncake_line([*system, 11], last=40)]
    trace = load_trace(write_lines(tmp_path / "m.jsonl", lines), model=HAIKU)
    specs = []
    for seed in (1, 2):
        prompts = TracePrompts(trace, seed, "test")
        prompts.calibrate(HAIKU, emulator_count)
        specs.append([prompts.spec(entry) for entry in trace.entries])
    first, other = specs
    blocks = first[0].messages[0]["content"]
    assert len(blocks) == 11 + 1  # 11 hash blocks, then the output-length instruction
    assert [b["text"] for b in blocks] == [b["text"] for b in other[0].messages[0]["content"]]
    assert [b["text"] for b in blocks[:10]] == [
        b["text"] for b in first[1].messages[0]["content"][:10]
    ]
    assert len({b["text"] for b in blocks}) == 12
    sizes = [emulator_count(HAIKU, [{"role": "user", "content": [b]}], None) - 7 for b in blocks]
    assert sizes[:11] == [512] * 10 + [300]
    assert [i for i, b in enumerate(blocks) if "cache_control" in b] == [9]  # after 10 blocks
    assert first[0].output_target == 10 and first[0].max_tokens == 10
    # a loadkit prefix: the same system text for the same id, sized as asked
    loadkit = write_lines(
        tmp_path / "l.jsonl",
        [
            {**GOOD, "input_tokens": 6000, "prefix_id": "bot", "prefix_tokens": 5000},
            {**GOOD, "input_tokens": 5500, "prefix_id": "bot", "prefix_tokens": 5000},
            {**GOOD, "input_tokens": 700},
        ],
    )
    trace = load_trace(loadkit)
    prompts = TracePrompts(trace, 3, "test")
    prompts.calibrate(HAIKU, emulator_count)
    a, b, c = (prompts.spec(entry) for entry in trace.entries)
    assert a.system == b.system and a.system[0]["cache_control"] == {"type": "ephemeral"}
    assert emulator_count(HAIKU, [{"role": "user", "content": "x"}], a.system) - 11 == 5000
    assert a.messages != b.messages and c.system is None
    for spec, size in ((a, 6000), (b, 5500), (c, 700)):
        assert abs(emulator_count(HAIKU, spec.messages, spec.system) - size) <= 8


def test_records_become_a_trace_across_processes(tmp_path: Path) -> None:
    """Times on the Unix clock (t + wall_offset_ns), so two processes' files merge."""

    def record(t_intended: int, offset: int, **more: Any) -> dict[str, Any]:
        return {
            "model": HAIKU, "speed": "standard", "max_tokens": 100, "t_intended": t_intended,
            "t_send": t_intended + 10, "wall_offset_ns": offset, "input_tokens": 90,
            "cache_read_input_tokens": 200, "cache_creation_input_tokens": 10,
            "output_tokens": 30, "outcome": "ok", "output_target": 0, "session_id": "",
            "prompt_tokens_target": 300,
        } | more  # fmt: skip

    one = write_lines(tmp_path / "r.jsonl", [record(5_000_000, 1_000_000_000)])
    two = write_lines(
        tmp_path / "r-worker2.jsonl",
        [
            record(1_000_000, 1_002_000_000, session_id="s"),  # 2 ms before the first
            record(0, 0, t_send=0),  # never sent: left out
            record(9_000_000, 1_000_000_000, outcome="rate_limited", input_tokens=0,
                   cache_read_input_tokens=0, cache_creation_input_tokens=0, output_target=40),
        ],
    )  # fmt: skip
    lines, skipped = trace_from_records([one, two])
    assert skipped == 1
    assert [line["timestamp_ms"] for line in lines] == [0.0, 2.0, 6.0]
    assert lines[0]["session_id"] == "s" and "session_id" not in lines[1]
    assert [line["input_tokens"] for line in lines] == [300, 300, 300]  # counted, or the target
    assert [line.get("output_tokens") for line in lines] == [30, 30, 40]
    with pytest.raises(TraceError, match=r"bad\.jsonl:1: not a loadkit record"):
        trace_from_records([write_lines(tmp_path / "bad.jsonl", [{"t_send": 5}])])


def test_the_shipped_examples_are_the_generators_output(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "scripts/make_traces.py", "--out", str(tmp_path)], cwd=ROOT, check=True
    )
    shipped = ROOT / "workloads" / "traces"
    for name in ("example-loadkit.jsonl", "example-mooncake.jsonl"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
        trace = load_trace(shipped / name, model=HAIKU)
        assert 100 <= len(trace.entries) <= 300
    mooncake = load_trace(shipped / "example-mooncake.jsonl", model=HAIKU)
    assert sum(1 for e in mooncake.entries if e.breakpoints) > len(mooncake.entries) / 2
