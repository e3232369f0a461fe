"""``--records``: every request's result record as one JSON line, written off the hot path."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.sinks.records import RecordsWriter

from .conftest import QUICK_CONFIG
from .runs import run_locust


def _record(i: int) -> ResultRecord:
    record = ResultRecord(
        model="claude-opus-4-6",
        speed="fast",
        scenario="unit",
        prompt_tokens_target=1000 + i,
        max_tokens=64,
        t_send=1_000_000,
        t_first_token=301_000_000,
        t_last_token=801_000_000,
        t_end=802_000_000,
        itl_ns=[1, 2, 3],
        request_id=f"req_{i}",
        status=200,
        outcome=Outcome.OK,
        served_speed="fast",
        input_tokens=1000 + i,
        output_tokens=51,
        rate_limits={"anthropic-fast-input-tokens-limit": "345678"},
    )
    record.attempts.append(Attempt(speed="fast", t_send=1_000_000, status=200, ttft_ms=300.0))
    return record


def test_every_field_of_the_record_and_its_attempts_is_written(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writer = RecordsWriter(path, "run-1", "local")
    writer.add(_record(0))
    writer.add(_record(1), while_stopping=True)
    stats = writer.close()
    assert (stats.written, stats.dropped, stats.error) == (2, 0, "")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    for name in (f.name for f in fields(ResultRecord)):
        assert name in first, name
    assert set(first["attempts"][0]) == {f.name for f in fields(Attempt)}
    assert first["outcome"] == "ok" and first["itl_ns"] == [1, 2, 3]
    assert first["rate_limits"] == {"anthropic-fast-input-tokens-limit": "345678"}
    assert first["ttft_ms"] == 300.0 and first["otps"] == pytest.approx(100.0)
    assert first["run_id"] == "run-1" and first["process"] == "local"
    assert [line["ended_while_stopping"] for line in lines] == [False, True]
    assert [line["request_id"] for line in lines] == ["req_0", "req_1"]


def test_a_full_buffer_and_a_closed_writer_count_what_they_drop(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    # the writer does not wake before close: the buffer fills
    writer = RecordsWriter(path, "run-1", "local", max_buffered=3, flush_interval_s=60)
    for i in range(5):
        writer.add(_record(i))
    stats = writer.close()
    writer.add(_record(5))  # after the end: counted, not lost silently
    assert (stats.written, stats.dropped) == (3, 3)
    assert len(path.read_text().splitlines()) == 3


def test_an_unwritable_path_is_refused_at_the_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        RecordsWriter(tmp_path / "no-such-folder" / "r.jsonl", "run-1", "local")


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "emulator.yaml"
    path.write_text(yaml.safe_dump(QUICK_CONFIG))
    return path


@pytest.mark.slow
def test_each_worker_writes_its_own_file_and_the_master_adds_them_up(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    path = tmp_path / "records.jsonl"
    result, summary = run_locust(
        tmp_path, "--workload", "workloads/ci.yaml", "--emulator-config", str(config),
        "-u", "8", "-r", "8", "-t", "3s", "--processes", "2", "--records", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary is not None
    assert not path.exists()  # the master runs no users
    files = sorted(tmp_path.glob("records-worker*.jsonl"))
    assert [f.name for f in files] == ["records-worker0.jsonl", "records-worker1.jsonl"]
    counts = [len(f.read_text().splitlines()) for f in files]
    total = summary["total"]
    assert sum(counts) == total["requests"] + total["cancelled"]
    assert all(counts), counts
    assert f"records: {sum(counts)} written by 2 worker(s), 0 dropped" in result.stderr
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert {line["run_id"] for line in lines} == {summary["run_id"]}
    assert {line["process"] for line in lines} == {"worker-0", "worker-1"}
    # the local runner's file, one line per request counted: tests/test_calibrate_roundtrip.py
