"""Run ``loadkit emulator`` with garbage-collector instrumentation (a benchmark experiment).

Records every collection's pause through ``gc.callbacks`` and prints a summary per
generation to stderr at exit. With ``--tuned`` it first moves start-up objects out of the
collector's reach and makes full collections rare::

    gc.collect(); gc.freeze(); gc.set_threshold(100_000, 50, 1000)

    python bench/emulator_gcwrap.py [--tuned] emulator --port 8000 --config FILE --seed 1
"""

from __future__ import annotations

import atexit
import gc
import sys
import time
from typing import Any

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses[int(info["generation"])].append((time.perf_counter() - _started[0]) * 1000.0)


def _report() -> None:
    for gen, values in _pauses.items():
        if values:
            v = sorted(values)
            print(
                f"gc gen{gen}: n={len(v)} p50={v[len(v) // 2]:.2f}ms max={v[-1]:.2f}ms "
                f"total={sum(v):.0f}ms tracked_objects={len(gc.get_objects())}",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    argv = sys.argv[1:]
    tuned = "--tuned" in argv
    if tuned:
        argv.remove("--tuned")
    from loadkit.cli import build_parser
    from loadkit.emulator import server

    original = server.run

    def run(*args: Any, **kwargs: Any) -> None:
        if tuned:
            gc.collect()
            gc.freeze()
            gc.set_threshold(100_000, 50, 1000)
        print(
            f"gc: tracked={len(gc.get_objects())} frozen={gc.get_freeze_count()}",
            file=sys.stderr,
            flush=True,
        )
        original(*args, **kwargs)

    server.run = run  # the CLI looks it up at call time
    gc.callbacks.append(_on_gc)
    atexit.register(_report)
    parsed = build_parser().parse_args(argv)
    sys.exit(parsed.func(parsed))


if __name__ == "__main__":
    main()
