"""A latency histogram (ms) whose percentiles cost the same however many samples it holds.

Buckets are 2% wide (bucket ``i`` holds values up to ``GROWTH ** i`` µs; bucket 0 all under
1 µs, the last all beyond), so a percentile, read as its bucket's upper edge, is at most 2%
high; the max is exact. Sorting the samples instead held the emulator's loop for ~90 ms at
200,000 of them (a ``GET /_emulator/stats`` during a run delayed every stream by as much).
Histograms of several processes merge by adding their counts.
"""

from __future__ import annotations

import math
from typing import Any

GROWTH = 1.02
BUCKETS = 1000  # GROWTH ** 1000 µs is 6.7 minutes
_LOG_GROWTH = math.log(GROWTH)


def bucket(value_ms: float) -> int:
    us = value_ms * 1000.0
    if us < 1.0:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(us) / _LOG_GROWTH))


def bucket_upper_ms(index: int) -> float:
    return float(GROWTH**index / 1000.0)


class Histogram:
    __slots__ = ("counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.max: float | None = None

    def add(self, value_ms: float) -> None:
        self.counts[bucket(value_ms)] += 1
        self.total += 1
        if self.max is None or value_ms > self.max:
            self.max = value_ms

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the ``ceil(q * total)``-th smallest value
        (never above the max)."""
        if not self.total or self.max is None:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(bucket_upper_ms(index), self.max)
        return self.max  # pragma: no cover - the counts sum to total

    def figures(self, prefix: str = "") -> dict[str, float | None]:
        return {
            prefix + "p50": self.percentile(0.50),
            prefix + "p99": self.percentile(0.99),
            prefix + "max": self.max,
        }

    def clear(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.max = None

    # between processes --------------------------------------------------------------------
    def raw(self) -> dict[str, Any]:
        return {"buckets": {str(i): n for i, n in enumerate(self.counts) if n}, "max": self.max}

    def add_raw(self, raw: dict[str, Any]) -> None:
        """Adds another histogram's ``raw()``."""
        for index, n in raw["buckets"].items():
            self.counts[int(index)] += n
            self.total += n
        other = raw["max"]
        if other is not None and (self.max is None or other > self.max):
            self.max = other
