"""Garbage-collector settings for long-running load processes (a leaf module)."""

from __future__ import annotations

import gc

#: Collect the youngest generation after this many net new container objects...
YOUNG_THRESHOLD = 1000
#: ...the middle one at every second young collection (its survivors are few)...
MIDDLE_THRESHOLD = 1
#: ...and everything only after this many middle collections (and when CPython's own rule,
#: old objects grown by a quarter since the last full collection, agrees).
OLD_THRESHOLD = 1000


def tune_gc() -> None:
    """Keep the cyclic collector from pausing a process that holds thousands of streams.

    A collection's pause grows with the objects it walks, ~0.7 us each here (measured with
    ``gc.callbacks`` and thread CPU time, bench/README.md "GC pauses"). Each held stream keeps
    ~15 container objects alive for its whole life, so at 10,000 streams:

    - default thresholds: full collections over ~160k objects, 80-100 ms each;
    - a large young generation (100,000): each young collection walks 100k objects, 65 ms;
    - small young and middle generations (these values): no collection walks more than ~3,000
      objects (~3 ms), and full collections wait for a far larger growth.

    Objects alive after start-up are frozen out of collection altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
