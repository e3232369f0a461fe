"""Trace replay benchmark: start lateness (actual - recorded start) replaying a trace.

    .venv/bin/python bench/trace_bench.py [--seconds 20] [--rates 100,500] [--formats F,G]

For each format and rate, a trace of Poisson arrivals at that rate for ``--seconds`` is
written for Sonnet 4.6 (loadkit's: 50-token synthetic prompts; Mooncake's: 2 blocks of 512
tokens shared by every entry, then 50 of its own: each request carries a breakpoint and
reads 1,024 tokens from the cache) and replayed by one headless Locust process pinned to
CPU 1 (``--trace``, ``-u 1``: one user schedules the whole trace) against an emulator pinned
to CPU 0 (TTFT 50 ms, 10-token replies, no limits), as ``scheduler_bench.py`` does for the
open loop. The figures come from the run's summary: **start error** = when the replay
starts a request's greenlet - its time in the trace (``open_loop.start_lateness_ms``);
**queue delay** = when its body reached the socket - that time. Goal (issue 15): start
error p99 <= 2 ms at 500 requests/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from loadkit.emulator.launcher import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
MODEL = "claude-sonnet-4-6"  # a minimum cacheable prefix of 1,024 tokens: 2 blocks
EMULATOR = {
    "models": {
        MODEL: {
            "ttft_base_ms": 50, "decode_tokens_per_s": 1000, "ttft_jitter": 0,
            "decode_jitter": 0, "max_concurrent_streams": 20000, "max_queue": 20000,
        }
    },
    "output_tokens": {"kind": "fixed", "value": 10},
    "tokens_per_delta": 5,
    "rate_limits": {"sonnet": {"requests_per_minute": None, "input_tokens_per_minute": None,
                              "output_tokens_per_minute": None}},
    "acceleration_limit": {"enabled": False},
}  # fmt: skip
WORKLOAD = {
    "name": "trace-bench",
    "models": [{"model": MODEL}],
    "prompt_tokens": {"kind": "fixed", "value": 50},
    "max_tokens": {"kind": "fixed", "value": 10},
}


def write_trace(path: Path, kind: str, rate: int, seconds: int) -> int:
    rng = random.Random(rate)
    now, lines = 0.0, []
    while now < seconds * 1000:
        if kind == "loadkit":
            line: dict[str, Any] = {"timestamp_ms": round(now, 3), "model": MODEL,
                                    "input_tokens": 50, "max_tokens": 10}  # fmt: skip
        else:
            unique = len(lines) + 1
            line = {"timestamp": round(now, 3), "input_length": 2 * 512 + 50,
                    "output_length": 10, "hash_ids": [0, 1, 1000 + unique]}  # fmt: skip
        lines.append(json.dumps(line))
        now += rng.expovariate(rate) * 1000
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def run(kind: str, rate: int, seconds: int, tmp: Path, target: str) -> tuple[int, dict[str, Any]]:
    (tmp / "workload.yaml").write_text(yaml.safe_dump(WORKLOAD))
    trace = tmp / f"trace-{kind}-{rate}.jsonl"
    entries = write_trace(trace, kind, rate, seconds)
    summary = tmp / f"summary-{kind}-{rate}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = "trace-bench-key"  # the emulator takes any key
    subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-m", "locust", "-f", "locustfiles/messages.py",
         "--headless", "--only-summary", "-u", "1", "-r", "1", "--trace", str(trace),
         "--trace-model", MODEL, "--max-in-flight", "5000", "--target-url", target,
         "--workload", str(tmp / "workload.yaml"), "--summary-json", str(summary)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    return entries, json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rates", default="100,500")
    parser.add_argument("--formats", default="loadkit,mooncake")
    args = parser.parse_args()
    print(
        f"{'format':>9} {'rate/s':>7} {'entries':>8} {'started':>8} {'late>1ms':>9} "
        f"{'start err p50':>14} {'p99':>8} {'queue p50':>10} {'p99':>8} {'achieved/s':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(config=EMULATOR, cpu=0) as emu:
        for kind in args.formats.split(","):
            for rate in (int(r) for r in args.rates.split(",")):
                entries, data = run(kind, rate, args.seconds, Path(tmp), emu.base_url)
                loop = data["open_loop"]
                total = data["total"]
                print(
                    f"{kind:>9} {rate:>7} {entries:>8} {loop.get('scheduled', 0):>8} "
                    f"{loop.get('late', 0):>9} {loop['start_lateness_ms_p50']:>11.3f} ms "
                    f"{loop['start_lateness_ms_p99']:>5.3f} ms"
                    f" {total['queue_ms']['p50'] or 0:>7.3f} ms "
                    f"{total['queue_ms']['p99'] or 0:>5.3f} ms"
                    f" {total['requests'] / data['duration_s']:>11.1f}"
                )


if __name__ == "__main__":
    main()
