"""Mergeable quantile sketches (DDSketch, 1% relative error) that travel as plain dicts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ddsketch import DDSketch

RELATIVE_ACCURACY = 0.01


class Sketch:
    """Positive values with percentiles of stated relative error, mergeable across processes."""

    __slots__ = ("_sketch",)

    def __init__(self) -> None:
        self._sketch = DDSketch(RELATIVE_ACCURACY)

    def add(self, value: float) -> None:
        self._sketch.add(value)

    def add_all(self, values: Iterable[float]) -> None:
        """``add`` of each value in turn, with the same bins, count, sum, min and max.

        A reply's inter-token gaps come a hundred at a time; DDSketch's ``add`` goes through
        four method calls for each, most of the cost of an event in the aggregate.
        """
        s = self._sketch
        mapping = s._mapping
        log_gamma, offset, smallest = mapping._log_gamma, mapping._offset, mapping.min_possible
        store = s._store
        ceil = math.ceil
        count, total, low, high = s._count, s._sum, s._min, s._max
        for value in values:
            if value > smallest:
                key = int(ceil(log_gamma(value)) + offset)
                if store.min_key <= key <= store.max_key:
                    store.bins[key - store.offset] += 1.0
                    store.count += 1.0
                else:
                    store.add(key, 1.0)  # grows the bins
            elif value < -smallest:
                s._negative_store.add(mapping.key(-value), 1.0)
            else:
                s._zero_count += 1.0
            count += 1.0
            total += value * 1.0
            if value < low:
                low = value
            if value > high:
                high = value
        s._count, s._sum, s._min, s._max = count, total, low, high

    @property
    def count(self) -> int:
        return int(self._sketch.count)

    def quantile(self, q: float) -> float | None:
        if self._sketch.count == 0:
            return None
        value = self._sketch.get_quantile_value(q)
        return None if value is None else float(value)

    @property
    def mean(self) -> float | None:
        return self._sketch.sum / self._sketch.count if self._sketch.count else None

    def merge(self, other: Sketch) -> None:
        self._sketch.merge(other._sketch)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack/JSON-friendly form: the non-empty bins of the store, and the totals."""
        s = self._sketch
        store = s._store
        bins = {str(store.offset + i): n for i, n in enumerate(store.bins) if n}
        return {
            "bins": bins,
            "zero": s._zero_count,
            "count": s._count,
            "sum": s._sum,
            "min": s._min if s._count else None,
            "max": s._max if s._count else None,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Sketch:
        sketch = cls()
        s = sketch._sketch
        for key, weight in data["bins"].items():
            s._store.add(int(key), weight)
        s._zero_count = data["zero"]
        s._count = data["count"]
        s._sum = data["sum"]
        if data["count"]:
            s._min, s._max = data["min"], data["max"]
        return sketch
