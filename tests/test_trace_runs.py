"""Trace replay through real Locust runs against real emulator processes: every entry sent
once at its recorded time, Mooncake sharing read from the cache, speed-up and loop, master and
workers, the run ending by itself, records made back into the trace, and bad input refused."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess
from loadkit.trace import load_trace

from .conftest import QUICK_CONFIG
from .runs import ROOT, clean_environment, run_locust

HAIKU = "claude-haiku-4-5"
KEY = {"ANTHROPIC_API_KEY": "test-key"}


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def records(folder: Path, pattern: str = "records*.jsonl") -> list[dict[str, Any]]:
    return [json.loads(x) for p in sorted(folder.glob(pattern)) for x in p.read_text().splitlines()]


def served(emulator: EmulatorProcess) -> dict[str, dict[str, Any]]:
    found = httpx2.get(f"{emulator.base_url}/_emulator/served", timeout=10).json()
    return {s["request_id"]: s for s in found}


def received(emulator: EmulatorProcess) -> int:
    stats = httpx2.get(f"{emulator.base_url}/_emulator/stats", timeout=10).json()
    return int(stats["totals"]["received"])


def replay(tmp_path: Path, emulator: EmulatorProcess, trace: Path, *args: str) -> Any:
    return run_locust(
        tmp_path, "-u", "1", "-r", "1", "--workload", "workloads/ci.yaml",
        "--target-url", emulator.base_url, "--trace", str(trace),
        "--records", str(tmp_path / "records.jsonl"), *args, env=KEY, timeout=90,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timing
def test_each_entry_is_sent_once_at_its_recorded_time(tmp_path: Path) -> None:
    """40 entries over ~2 s, gaps of 0-100 ms (some together): the run sends exactly 40 (the
    emulator's counters and the summary agree), ends by itself, and each request reaches the
    emulator at its intended time: its schedule is the trace's offsets exactly (same clock),
    and its arrival (``/_emulator/served`` arrived_ns, CLOCK_MONOTONIC like the harness's
    perf_counter_ns) comes after it by the harness's own send path: the SDK's ~2 ms of request
    building per request (DESIGN.md section 6) plus the hub's scheduling, which on this shared
    2-core machine can add a few ms more: at most 20 ms for any, 5 ms at the median. Then the
    records, made back into a trace, give the same trace."""
    rng = random.Random(5)
    offsets = [0.0]
    for _ in range(39):
        offsets.append(round(offsets[-1] + rng.choice([0, 20, 50, 100]) * rng.random(), 3))
    lines = [
        {"timestamp_ms": t, "model": HAIKU, "input_tokens": rng.randint(100, 2000),
         "max_tokens": 64, "session_id": f"e{i}"}
        for i, t in enumerate(offsets)
    ]  # fmt: skip
    trace = write_lines(tmp_path / "trace.jsonl", lines)
    with EmulatorProcess(config=QUICK_CONFIG, seed=3) as emulator:
        result, data = replay(tmp_path, emulator, trace)
        truth, count = served(emulator), received(emulator)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None and "every entry was sent and answered" in result.stderr
    assert data["total"]["requests"] == count == 40 and data["total"]["outcomes"] == {"ok": 40}
    assert data["open_loop"]["scheduled"] == 40 and data["open_loop"]["not_started"] == 0
    assert data["duration_s"] < 10  # ended by itself (no -t), not by a timeout
    replayed = data["trace"]
    assert (replayed["entries"], replayed["format"], replayed["completed"]) == (40, "loadkit", True)
    assert (replayed["speedup"], replayed["loop"], replayed["processes"]) == (1.0, False, 1)
    assert data["meta"]["arrival"] == f"trace replay, {trace} at 1x"
    rows = {r["session_id"]: r for r in records(tmp_path)}
    assert sorted(rows) == sorted(line["session_id"] for line in lines)
    first = rows["e0"]["t_intended"]
    late = []
    for line in lines:
        row = rows[line["session_id"]]
        assert (row["t_intended"] - first) / 1e6 == pytest.approx(line["timestamp_ms"], abs=0.01)
        late.append((truth[row["request_id"]]["arrived_ns"] - row["t_intended"]) / 1e6)
    assert min(late) >= -1 and max(late) <= 20 and statistics.median(late) <= 5, late
    # loadkit trace --from: the records give the trace back (sizes as the server counted)
    out = tmp_path / "again.jsonl"
    made = subprocess.run(
        [sys.executable, "-m", "loadkit", "trace", "--from", str(tmp_path / "records.jsonl"),
         "-o", str(out)],
        cwd=ROOT, env=clean_environment(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = {e.session_id: e for e in load_trace(out).entries}
    for line in lines:
        entry, row = again[line["session_id"]], rows[line["session_id"]]
        assert entry.offset_ms == pytest.approx(line["timestamp_ms"], abs=0.01)
        assert (entry.model, entry.speed, entry.max_tokens) == (HAIKU, "standard", 64)
        assert entry.input_tokens == row["input_tokens"]
        assert abs(entry.input_tokens - line["input_tokens"]) <= 8
        assert entry.output_target == row["output_tokens"] == 20  # the emulator's fixed 20


def blocks(line: dict[str, Any]) -> list[tuple[int, int]]:
    """(hash id, tokens) of each block: the last one holds the rest of input_length."""
    ids = line["hash_ids"]
    last = line["input_length"] - (len(ids) - 1) * 512
    return [(block, 512 if i < len(ids) - 1 else last) for i, block in enumerate(ids)]


@pytest.mark.slow
def test_mooncake_hash_sharing_shows_as_cache_reads(tmp_path: Path) -> None:
    """Prompt caching page (platform.claude.com/docs/en/build-with-claude/prompt-caching, as
    of 2026-11): a request reads the longest cached prefix ending at one of its breakpoints
    (the prefix is cached once the response begins), at least the model's minimum (4,096
    tokens for Haiku 4.5). Expected here from the hash ids alone: each entry reads the
    longest run of equal blocks it begins with in common with an earlier entry, when that
    run is long enough; the emulator counts exactly 512 tokens a block, plus 7 tokens of
    request and message framing before the first block. Entries 400 ms apart: each one's
    prefix is cached (at its first token, ~100 ms) well before the next arrives, even on a
    busy machine."""
    system = list(range(10))
    shapes = [
        ([*system, 10], 300),
        ([*system, 11, 12], 100),
        ([50, 51], 100),
        ([*system, 11, 12, 13], 200),  # 11 blocks in common with the second
        ([*system, 10, 14], 50),  # 10 with the first (whose block 10 was a short one)
        ([50, 51, 52], 10),  # 1 block with the third: too short to be cached
        ([*system, 11, 12, 13], 200),  # the fourth again: all of it
    ]
    lines = [
        {"timestamp": 400 * i, "input_length": (len(ids) - 1) * 512 + last,
         "output_length": 30, "hash_ids": ids, "session_id": f"e{i}"}
        for i, (ids, last) in enumerate(shapes)
    ]  # fmt: skip
    trace = write_lines(tmp_path / "mooncake.jsonl", lines)
    with EmulatorProcess(config=QUICK_CONFIG, seed=4) as emulator:
        result, data = replay(tmp_path, emulator, trace, "--trace-model", HAIKU)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None and data["total"]["requests"] == len(lines)
    rows = {r["session_id"]: r for r in records(tmp_path)}
    expected = []
    for j, line in enumerate(lines):
        best = 0
        for earlier in lines[:j]:
            common = 0
            for a, b in zip(blocks(earlier), blocks(line), strict=False):
                if a != b:
                    break
                common += a[1]
            best = max(best, common)
        expected.append(best if best >= 4096 else 0)
    reads = [rows[line["session_id"]]["cache_read_input_tokens"] for line in lines]
    assert expected == [0, 5120, 0, 5632, 5120, 0, 6344]  # the shapes say so
    assert [r - 7 if r else 0 for r in reads] == expected, reads
    assert data["total"]["cache_read_input_tokens"] == sum(reads)


@pytest.mark.slow
@pytest.mark.timing
def test_speedup_and_loop(tmp_path: Path) -> None:
    """Offsets 0, 200, 400, 600 ms at --trace-speedup 4: 0, 50, 100, 150 ms; looped, each pass
    starts one span plus one mean gap (800 ms / 4 = 200 ms) after the last, until -t ends the
    run: the intended starts are one every 50 ms from the first, none missed. The entries
    share a prefix id: once the first request has been answered, every request reads that
    system prefix from the cache (1,200 tokens, above Sonnet 4.6's minimum of 1,024; prompt
    caching page, platform.claude.com/docs/en/build-with-claude/prompt-caching, 2026-11)."""
    lines = [
        {"timestamp_ms": t, "model": "claude-sonnet-4-6", "input_tokens": 1500,
         "prefix_id": "support-bot", "prefix_tokens": 1200, "max_tokens": 16}
        for t in (0, 200, 400, 600)
    ]  # fmt: skip
    trace = write_lines(tmp_path / "loop.jsonl", lines)
    with EmulatorProcess(config=QUICK_CONFIG, seed=5) as emulator:
        result, data = replay(
            tmp_path, emulator, trace, "--trace-speedup", "4", "--trace-loop", "-t", "2s"
        )
        received_count = received(emulator)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    rows = sorted(records(tmp_path), key=lambda r: r["t_intended"])
    starts = [r["t_intended"] for r in rows]
    steps = [(t - starts[0]) / 50e6 for t in starts]
    assert all(abs(step - round(step)) < 1e-3 for step in steps), steps
    # one start every 50 ms: none missed, none twice, pass after pass
    assert [round(step) for step in steps] == list(range(len(steps)))
    assert steps[-1] * 50 >= 1200  # looped for (most of) the 2 s: 6 passes or more
    assert len(starts) == data["open_loop"]["scheduled"] >= received_count
    assert data["accounting"]["mismatches"] == [] and data["open_loop"].get("not_started", 0) <= 1
    assert data["trace"]["loop"] and not data["trace"]["completed"]  # ended by -t
    # the shared prefix (1,200 tokens and 6 of system and request framing) read from the cache
    later = [r for r, step in zip(rows, steps, strict=True) if step >= 4 and r["outcome"] == "ok"]
    assert len(later) >= 20
    assert {r["cache_read_input_tokens"] for r in later} == {1206}
    assert all(abs(r["input_tokens"] + r["cache_read_input_tokens"] - 1500) <= 8 for r in later)


@pytest.mark.slow
def test_master_and_workers_send_each_entry_once(tmp_path: Path) -> None:
    """Two workers: entry i by the worker in position i mod 2; 30 entries sent exactly once
    (every session id once, the emulator's count), on one schedule (the workers start the
    trace at the same wall-clock time), and the run ends by itself."""
    lines = [
        {"timestamp_ms": 40 * i, "model": HAIKU, "input_tokens": 300, "max_tokens": 16,
         "session_id": f"e{i}"}
        for i in range(30)
    ]  # fmt: skip
    trace = write_lines(tmp_path / "trace.jsonl", lines)
    with EmulatorProcess(config=QUICK_CONFIG, seed=6) as emulator:
        result, data = replay(tmp_path, emulator, trace, "--processes", "2", "-u", "2")
        count = received(emulator)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None and "by the 2 workers" in result.stderr
    assert data["total"]["requests"] == count == 30
    assert data["trace"]["processes"] == 2 and data["trace"]["completed"]
    assert data["accounting"]["mismatches"] == []
    rows = records(tmp_path, "records*worker*.jsonl")
    assert sorted(r["session_id"] for r in rows) == sorted(line["session_id"] for line in lines)
    shares = {}
    for row in rows:
        shares.setdefault(row["process"], set()).add(int(row["session_id"][1:]) % 2)
    assert sorted(map(sorted, shares.values())) == [[0], [1]]  # one takes the even entries
    first = min(r["t_intended"] + r["wall_offset_ns"] for r in rows)
    by_id = {line["session_id"]: line["timestamp_ms"] for line in lines}
    for row in rows:  # one schedule across both processes, to a millisecond
        at = (row["t_intended"] + row["wall_offset_ns"] - first) / 1e6
        assert at == pytest.approx(by_id[row["session_id"]], abs=1.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("line", "args", "expected"),
    [
        ({"timestamp_ms": 0, "model": HAIKU, "input_tokens": 10}, (), ":2: max_tokens: Field"),
        (None, ("--arrival-rate", "5"), "leave out --arrival-rate"),
        (None, ("--trace-loop",), "starts at the same time, so the trace has no span"),
    ],
)
def test_bad_traces_and_options_stop_the_run(
    tmp_path: Path, line: dict[str, Any] | None, args: tuple[str, ...], expected: str
) -> None:
    good = {"timestamp_ms": 0, "model": HAIKU, "input_tokens": 10, "max_tokens": 5}
    trace = write_lines(tmp_path / "bad.jsonl", [good] + ([line] if line else []))
    result, _ = run_locust(
        tmp_path, "-u", "1", "-r", "1", "-t", "10s", "--workload", "workloads/ci.yaml",
        "--trace", str(trace), *args, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr and (line is None or f"{trace}:2" in result.stderr)
