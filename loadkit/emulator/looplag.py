"""The event loop's own lag: how late a timer fires on this loop, measured all the time.

A probe timer is set every ``interval_s`` exactly as a stream's first token is (a
``call_later`` to a ``time.perf_counter`` target, re-armed if it fires early), so its
lateness is the part of first-token lateness the loop itself adds: callbacks that ran too
long, collector pauses, the machine taking the core away. An idle loop's figure is the
floor (uvloop's timers have millisecond granularity).

Each sample is also split (Linux, ``/proc/thread-self/schedstat``): the time the kernel kept
the loop's thread waiting for a CPU since the last sample (the machine: other processes on
the core) is taken out of its lag, at most all of it; what remains, ``own``, is the lag the
process made itself (long callbacks, collector pauses). Time a hypervisor steals is not seen
there and stays in ``own``.

Kept two ways: since start, in histograms of 2%-wide buckets (a percentile is its bucket's
upper edge, at most 2% high), and over the last ``window_s`` seconds, the samples themselves.
Both merge over processes (``merge``) for ``loadkit emulator --processes N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from loadkit.emulator.histogram import Histogram


class RunDelay:
    """Nanoseconds this thread has waited for a CPU while runnable (0 where unknown)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

    def read_ns(self) -> int:
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, 64, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class LoopLag:
    """Samples the running loop's timer lateness every ``interval_s`` until ``stop()``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval_s: float = 0.01, window_s: float = 10.0
    ) -> None:
        if not 0.0 < interval_s <= 1.0:
            raise ValueError(f"interval_s must be in (0, 1] seconds, not {interval_s!r}")
        if window_s <= 0.0:
            raise ValueError(f"window_s must be positive, not {window_s!r}")
        self.loop = loop
        self.interval_s = interval_s
        self.window_s = window_s
        self.lag = Histogram()
        self.own = Histogram()  # lag less the wait for a CPU
        self.started = time.perf_counter()
        # (perf_counter when measured, lag ms, own ms), the last window_s seconds
        self.recent: deque[tuple[float, float, float]] = deque()
        self._target = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._run_delay = RunDelay()
        self._waited_ns = 0

    def start(self) -> None:
        self._waited_ns = self._run_delay.read_ns()
        self._arm(time.perf_counter() + self.interval_s)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._run_delay.close()

    def _arm(self, target: float) -> None:
        self._target = target
        self._handle = self.loop.call_later(max(0.0, target - time.perf_counter()), self._fire)

    def _fire(self) -> None:
        now = time.perf_counter()
        if now < self._target:
            self._arm(self._target)  # early (millisecond timers): as a job does
            return
        waited_ns = self._run_delay.read_ns()
        lag_ms = (now - self._target) * 1000.0
        waited_ms = (waited_ns - self._waited_ns) / 1e6
        self._waited_ns = waited_ns
        self.record(lag_ms, lag_ms - min(lag_ms, waited_ms), now)
        self._arm(now + self.interval_s)

    def record(self, lag_ms: float, own_ms: float, now: float) -> None:
        self.lag.add(lag_ms)
        self.own.add(own_ms)
        recent = self.recent
        recent.append((now, lag_ms, own_ms))
        horizon = now - self.window_s
        while recent[0][0] < horizon:
            recent.popleft()

    # reading ----------------------------------------------------------------------------
    def raw(self) -> dict[str, Any]:
        """What ``merge`` needs of this process: sparse histogram, max, the window's samples."""
        self._expire()
        return {
            "interval_ms": self.interval_s * 1000.0,
            "window_s": self.window_s,
            "uptime_s": time.perf_counter() - self.started,
            "lag": self.lag.raw(),
            "own": self.own.raw(),
            "recent_ms": [lag for _, lag, _ in self.recent],
            "recent_own_ms": [own for _, _, own in self.recent],
        }

    def snapshot(self) -> dict[str, Any]:
        return merge([self.raw()])

    def _expire(self) -> None:
        horizon = time.perf_counter() - self.window_s
        recent = self.recent
        while recent and recent[0][0] < horizon:
            recent.popleft()


def merge(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One figure of several processes' ``raw()``: the lag of any of their timers."""
    lag, own = Histogram(), Histogram()
    recent: list[float] = []
    recent_own: list[float] = []
    interval_ms, window_s, uptime_s = 0.0, 0.0, 0.0
    for part in parts:
        lag.add_raw(part["lag"])
        own.add_raw(part["own"])
        recent.extend(part["recent_ms"])
        recent_own.extend(part["recent_own_ms"])
        interval_ms, window_s = part["interval_ms"], part["window_s"]
        uptime_s = max(uptime_s, part["uptime_s"])
    recent.sort()
    recent_own.sort()
    return {
        "probe_interval_ms": interval_ms,
        "since_start": {
            "samples": lag.total,
            "seconds": round(uptime_s, 3),
            **lag.figures(),
            **own.figures("own_"),
        },
        "recent": {
            "samples": len(recent),
            "seconds": window_s,
            **_sample_figures(recent, ""),
            **_sample_figures(recent_own, "own_"),
        },
    }


def _sample_figures(values: list[float], prefix: str) -> dict[str, float | None]:
    return {
        prefix + "p50": _percentile(values, 0.50),
        prefix + "p99": _percentile(values, 0.99),
        prefix + "max": values[-1] if values else None,
    }
