"""Open-loop arrivals: when requests are meant to start, whatever became of earlier ones.

A schedule hands out intended start times (``time.perf_counter_ns``) for a share of the total
rate; independent Poisson shares add up to a Poisson process of the total rate. The rate may
change over time (a sweep): it is read again at every arrival, and where the caller says when
it changes (``changes_after``), an arrival drawn at the old rate that would fall past the change
is drawn again from the change at the new rate. For Poisson arrivals that is exact (the process
is memoryless); without it, each user's first start of a new step would come up to one
old-rate gap late.
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
        changes_after: Callable[[float], float | None] | None = None,
    ) -> None:
        """``rate_at(seconds since start)`` gives this share's requests per second;
        ``changes_after(seconds)`` the next time after that the rate changes (None: never)."""
        self.rate_at = rate_at
        self.changes_after = changes_after
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
        at = (due - self.start_ns) / 1e9
        gap = self._gap(self.rate_at(at))
        if self.changes_after is not None:
            change = self.changes_after(at)
            while change is not None and at + gap > change:
                at = change  # the rate changes before that arrival: draw it from there
                rate = self.rate_at(at)
                gap = self._gap(rate)
                if self.kind == "constant" and rate > 0:
                    gap *= self.rng.random()  # a random phase in the new rate's first gap
                change = self.changes_after(at)
        self._next = self.start_ns + int((at + gap) * 1e9)
        return due

    def _gap(self, rate: float) -> float:
        """Seconds to the next arrival at ``rate``."""
        if rate <= 0:
            return 0.1  # paused: look again in 100 ms
        if self.kind == "poisson":
            return self.rng.expovariate(rate)
        return 1.0 / rate
