"""Run ``loadkit emulator`` with garbage-collector instrumentation (a benchmark experiment).

Records every collection's pause through ``gc.callbacks``, in wall time and in the thread's
CPU time (the latter is what the collector itself cost, even when the machine is shared),
and prints a summary per generation to stderr at exit. ``--thresholds A,B,C`` replaces the
thresholds ``loadkit.gctune.tune_gc`` sets (it still collects and freezes first)::

    python bench/emulator_gcwrap.py [--thresholds 100000,50,1000] emulator --port 8000 \
        --config FILE --seed 1
"""

from __future__ import annotations

import atexit
import gc
import sys
import time
from typing import Any

_pauses: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}  # (wall, cpu) ms
_started = [0.0, 0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter(), time.thread_time()]
    else:
        wall = (time.perf_counter() - _started[0]) * 1000.0
        cpu = (time.thread_time() - _started[1]) * 1000.0
        _pauses[int(info["generation"])].append((wall, cpu))


def _report() -> None:
    for gen, values in _pauses.items():
        if values:
            wall = sorted(w for w, _ in values)
            cpu = sorted(c for _, c in values)
            print(
                f"gc gen{gen}: n={len(values)} wall p50={wall[len(wall) // 2]:.2f} "
                f"max={wall[-1]:.2f} ms; cpu p50={cpu[len(cpu) // 2]:.2f} max={cpu[-1]:.2f} "
                f"total={sum(cpu):.0f} ms; tracked_objects={len(gc.get_objects())}",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    argv = sys.argv[1:]
    thresholds: tuple[int, ...] | None = None
    if "--thresholds" in argv:
        at = argv.index("--thresholds")
        thresholds = tuple(int(part) for part in argv[at + 1].split(","))
        del argv[at : at + 2]
    from loadkit.cli import build_parser
    from loadkit.emulator import server

    tuned = server.tune_gc

    def tune() -> None:
        tuned()
        if thresholds is not None:
            gc.set_threshold(*thresholds)
        print(
            f"gc: thresholds={gc.get_threshold()} tracked={len(gc.get_objects())} "
            f"frozen={gc.get_freeze_count()}",
            file=sys.stderr,
            flush=True,
        )

    server.tune_gc = tune  # run() looks it up at call time
    gc.callbacks.append(_on_gc)
    atexit.register(_report)
    parsed = build_parser().parse_args(argv)
    sys.exit(parsed.func(parsed))


if __name__ == "__main__":
    main()
