"""InfluxDB sink benchmark: cost per record on the user's hot path, and points/s to a real server.

    .venv/bin/python bench/sink_bench.py [--records 300000]

Needs Debian's victoria-metrics (``make test`` installs it); it is started on a free loopback
port for the run. Prints one table. Goals (issue 4): <= 5 us per record on the hot path,
>= 50,000 points/s sustained by one process, 0 lost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.sinks.influxdb import InfluxSink, LineFormatter, SinkSettings
from tests.servers import VictoriaMetrics


def make_records(count: int) -> list[ResultRecord]:
    now = time.perf_counter_ns()
    records = []
    for i in range(count):
        t = now - (count - i) * 10_000
        record = ResultRecord(
            model=("claude-opus-4-6", "claude-haiku-4-5")[i % 2],
            speed=("standard", "fast")[i % 3 == 0],
            scenario="bench",
            prompt_tokens_target=1000,
            max_tokens=512,
            t_send=t,
            t_headers=t + 5_000_000,
            t_first_token=t + 300_000_000 + i,
            t_last_token=t + 2_300_000_000,
            t_end=t + 2_300_100_000,
            status=200,
            outcome=Outcome.OK,
            served_speed="standard",
            input_tokens=1000 + i % 100,
            output_tokens=200,
            cache_read_input_tokens=4000,
            attempts=[Attempt("standard", t, status=200)],
            rate_limits={"anthropic-ratelimit-requests-remaining": "3999"},
            cost_usd=0.001 * (i % 7),
        )
        records.append(record)
    return records


def hot_path_cost(records: list[ResultRecord], settings: SinkSettings) -> tuple[float, float]:
    """Nanoseconds per add() with the writer idle; returns (median of runs, best run)."""
    quiet = SinkSettings(
        url=settings.url, batch_size=10**9, flush_interval_s=3600, max_buffered=10**9
    )
    per_record = []
    for _ in range(5):
        sink = InfluxSink(quiet, LineFormatter("bench", "hot-path"))
        start = time.perf_counter_ns()
        add = sink.add
        for record in records:
            add(record)
        per_record.append((time.perf_counter_ns() - start) / len(records))
        sink._buffer.clear()  # not written: this run measures only the hot path
        sink.close(timeout_s=1)
    return statistics.median(per_record), min(per_record)


def format_cost(records: list[ResultRecord]) -> float:
    """Nanoseconds per request line formatted (the writer thread's CPU), median of 5 runs."""
    formatter = LineFormatter("bench", "format")
    line = formatter.request_line
    per_record = []
    for _ in range(5):
        start = time.perf_counter_ns()
        for record in records:
            line(record)
        per_record.append((time.perf_counter_ns() - start) / len(records))
    return statistics.median(per_record)


def sustained(records: list[ResultRecord], settings: SinkSettings, vm: VictoriaMetrics) -> dict:
    sink = InfluxSink(settings, LineFormatter("bench-sustained", "bench"))
    start = time.perf_counter()
    for record in records:
        sink.add(record)
    while sink.stats.written < len(records) and time.perf_counter() - start < 300:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    stats = sink.close()
    deadline = time.monotonic() + 30
    stored = 0
    while time.monotonic() < deadline:
        series = vm.export("llm_request_attempts", run_id="bench-sustained")
        stored = sum(len(s["values"]) for s in series)
        if stored >= len(records):
            break
        time.sleep(0.5)
    return {
        "points_per_s": stats.written / elapsed,
        "written": stats.written,
        "stored": stored,
        "dropped": stats.dropped,
        "failed_writes": stats.failed_writes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300_000)
    args = parser.parse_args()
    records = make_records(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp) / "vm")
        vm.start()
        try:
            settings = SinkSettings(url=vm.url, token="bench", max_buffered=args.records * 2)
            median_ns, best_ns = hot_path_cost(records, settings)
            format_ns = format_cost(records)
            result = sustained(records, settings, vm)
        finally:
            vm.stop()
    lost = args.records - result["stored"]
    rows = [
        ("hot path: add() per record (median of 5)", f"{median_ns / 1000:.3f} us", "<= 5 us"),
        ("hot path: add() per record (best of 5)", f"{best_ns / 1000:.3f} us", ""),
        ("writer: line protocol per record (median of 5)", f"{format_ns / 1000:.3f} us", ""),
        ("sustained to VictoriaMetrics", f"{result['points_per_s']:,.0f} points/s", ">= 50,000"),
        ("records sent / stored", f"{args.records:,} / {result['stored']:,}", ""),
        ("lost", f"{lost:,}", "0"),
        ("write failures retried", f"{result['failed_writes']}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'value':>22}  goal")
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value:>22}  {goal}")


if __name__ == "__main__":
    main()
