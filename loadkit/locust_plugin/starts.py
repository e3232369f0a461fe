"""Requests started on a schedule (open loop, trace replay), whatever the answers do: each
start's lateness counted, waits for the in-flight cap counted, and the starts that came due
but were never made (the run ended first) counted, not lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
from gevent.pool import Pool

from loadkit.client import RequestSpec
from loadkit.locust_plugin.openloop import LATE_START_MS
from loadkit.locust_plugin.run import Run


def send_on_schedule(
    run: Run,
    pool: Pool,
    starts: Iterator[tuple[int, RequestSpec]],
    send: Callable[[RequestSpec], object],
) -> bool:
    """Send each spec of ``starts`` (``(due, spec)``, due a perf_counter_ns time; the spec is
    built before its time comes) in its own greenlet of ``pool``; True when ``starts`` ran out
    and every request ended, False when the run ended first."""
    counts = run.aggregate
    due: int | None = None  # the next start, taken from the schedule and not yet made
    try:
        for due, spec in starts:
            delay = (due - time.perf_counter_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
            if run.stopping_at:  # the run is ending: no more starts are owed
                return False
            if pool.full():
                counts.schedule["cap_waits"] += 1
                pool.wait_available()
            late_ms = (time.perf_counter_ns() - due) / 1e6
            counts = run.aggregate  # a worker's report swaps it for a new one
            counts.schedule["scheduled"] += 1
            if late_ms > LATE_START_MS:
                counts.schedule["late"] += 1
            counts.start_lateness.add(max(late_ms, 1e-3))
            spec.t_intended = due
            pool.spawn(send, spec)
            due = None
        pool.join()  # in flight: answered, unless the user is killed first (then cancelled)
        return True
    finally:
        now = run.stopping_at or time.perf_counter_ns()
        while due is not None and due <= now:
            run.aggregate.schedule["not_started"] += 1
            due = next(starts, (None, None))[0]
        pool.kill(block=True)  # their streams end as cancelled, each one reported
