"""Garbage-collector settings for long-running load processes (a leaf module)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Keep the cyclic collector from pausing a process that holds thousands of streams.

    Measured (bench/README.md): with default thresholds, full collections over ~160k live
    objects paused the emulator 80-100 ms at 10,000 streams. Objects alive after start-up are
    frozen out of collection, and collections run far less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
