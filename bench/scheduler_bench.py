"""Open-loop scheduler benchmark: start-time error (actual - scheduled start) at fixed rates.

    .venv/bin/python bench/scheduler_bench.py [--seconds 20]

One Locust process pinned to CPU 1 runs the open-loop schedule of loadkit's user against an
emulator pinned to CPU 0, at 100, 500 and 1000 requests/s; the figures come from the run's own
summary: the scheduler's start lateness (when the request's greenlet was started, minus its
scheduled time) and the queue delay (when its body reached the socket, minus that time).
Goal (issue 6): start error p99 <= 2 ms at 500 requests/s on one worker core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from loadkit.emulator.launcher import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
EMULATOR = {
    "models": {
        "claude-haiku-4-5": {
            "ttft_base_ms": 50, "decode_tokens_per_s": 1000, "ttft_jitter": 0,
            "decode_jitter": 0, "max_concurrent_streams": 20000, "max_queue": 20000,
        }
    },
    "output_tokens": {"kind": "fixed", "value": 10},
    "tokens_per_delta": 5,
    "rate_limits": {"haiku": {"requests_per_minute": None, "input_tokens_per_minute": None,
                              "output_tokens_per_minute": None}},
    "acceleration_limit": {"enabled": False},
}  # fmt: skip
WORKLOAD = {
    "name": "scheduler-bench",
    "models": [{"model": "claude-haiku-4-5"}],
    "prompt_tokens": {"kind": "fixed", "value": 50},
    "max_tokens": {"kind": "fixed", "value": 10},
}


def run(rate: int, seconds: int, tmp: Path, target: str) -> dict:
    (tmp / "workload.yaml").write_text(yaml.safe_dump(WORKLOAD))
    summary = tmp / f"summary-{rate}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = "scheduler-bench-key"  # the emulator takes any key
    subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-m", "locust", "-f", "locustfiles/messages.py",
         "--headless", "--only-summary", "-u", "10", "-r", "10", "-t", f"{seconds}s",
         "--arrival-rate", str(rate), "--max-in-flight", "5000", "--target-url", target,
         "--workload", str(tmp / "workload.yaml"), "--summary-json", str(summary)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rates", default="100,500,1000")
    args = parser.parse_args()
    print(
        f"{'rate/s':>7} {'started':>8} {'late>1ms':>9} {'start err p50':>14} {'p99':>8} "
        f"{'queue p50':>10} {'p99':>8} {'achieved/s':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(config=EMULATOR, cpu=0) as emu:
        for rate in (int(r) for r in args.rates.split(",")):
            data = run(rate, args.seconds, Path(tmp), emu.base_url)
            loop = data["open_loop"]
            total = data["total"]
            print(
                f"{rate:>7} {loop.get('scheduled', 0):>8} {loop.get('late', 0):>9} "
                f"{loop['start_lateness_ms_p50']:>11.3f} ms "
                f"{loop['start_lateness_ms_p99']:>5.3f} ms"
                f" {total['queue_ms']['p50'] or 0:>7.3f} ms "
                f"{total['queue_ms']['p99'] or 0:>5.3f} ms"
                f" {total['requests'] / data['duration_s']:>11.1f}"
            )


if __name__ == "__main__":
    main()
