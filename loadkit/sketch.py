"""Mergeable quantile sketches (DDSketch, 1% relative error) that travel as plain dicts."""

from __future__ import annotations

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
