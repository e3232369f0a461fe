"""Open-loop arrivals: when requests are meant to start, whatever became of earlier ones.

A schedule hands out intended start times (``time.perf_counter_ns``) for a share of the total
rate; independent Poisson shares add up to a Poisson process of the total rate. The rate may
change over time (a sweep): it is read again at every arrival.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

ArrivalKind = Literal["poisson", "constant"]


class ArrivalSchedule:
    def __init__(
        self,
        rate_at: Callable[[float], float],
        kind: ArrivalKind,
        rng: random.Random,
        start_ns: int | None = None,
    ) -> None:
        """``rate_at(seconds since start)`` gives this share's requests per second."""
        self.rate_at = rate_at
        self.kind = kind
        self.rng = rng
        self.start_ns = time.perf_counter_ns() if start_ns is None else start_ns
        self._next = self.start_ns
        if kind == "constant":  # a random phase, so that shares do not start in lockstep
            rate = rate_at(0.0)
            self._next += int(rng.random() * 1e9 / rate) if rate > 0 else 0

    def next_start(self) -> int:
        """The next intended start, in perf_counter_ns; schedules never fall behind."""
        due = self._next
        rate = self.rate_at((due - self.start_ns) / 1e9)
        if rate <= 0:
            gap = 1e8  # paused: look again in 100 ms
        elif self.kind == "poisson":
            gap = self.rng.expovariate(rate) * 1e9
        else:
            gap = 1e9 / rate
        self._next = due + int(gap)
        return due
