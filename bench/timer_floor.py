"""The machine's timer-noise floor: an idle uvloop loop measuring its own timer lateness.

Runs ``loadkit.emulator.looplag.LoopLag`` (the probe the emulator runs on its own loop, a
timer armed exactly as a stream's first token is) on an otherwise idle loop, pinned to
``--cpu``, for ``--duration`` seconds after ``--warmup``; prints one JSON object: lateness
p50/p90/p99/max in ms, and the same of its ``own`` part (less the time the kernel kept the
loop waiting for a CPU: what is left is the loop's own timer granularity). Run it on the
emulator's core during a benchmark step and the emulator's first-token lateness can be read
against it: what the floor has, the machine (and the core's other load) added; what the
emulator has beyond it, the emulator did.

    python bench/timer_floor.py --cpu 0 --warmup 2 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadkit.emulator.looplag import LoopLag

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import summary


async def probe(a: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    lag = LoopLag(loop, interval_s=a.interval_ms / 1000.0, window_s=a.duration + a.warmup + 60)
    lag.start()
    await asyncio.sleep(a.warmup)
    t0 = time.perf_counter()
    await asyncio.sleep(a.duration)
    lag.stop()
    kept = [(ms, own) for t, ms, own in lag.recent if t >= t0]
    own = summary([o for _, o in kept])
    return {
        "cpu": a.cpu,
        "interval_ms": a.interval_ms,
        **summary([ms for ms, _ in kept]),
        **{f"own_{k}": v for k, v in own.items() if k != "n"},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: no pinning)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--interval-ms", type=float, default=10.0, help="one timer every ...")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.warmup < 0 or a.interval_ms <= 0:
        p.error("--duration and --interval-ms must be positive, --warmup not negative")
    if a.cpu >= 0:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {a.cpu})
    gc.collect()
    gc.freeze()  # nothing to collect on an idle loop: no collector pauses in the floor
    out = uvloop.run(probe(a))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
