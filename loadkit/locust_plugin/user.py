"""The Locust user: streaming Messages requests drawn from the workload.

Closed loop (the default): one request after another. Open loop (``--arrival-rate``): each
user starts its share of the total rate on schedule, each request in its own greenlet, up to
its share of the in-flight cap; the request's latency counts from its scheduled start.
"""

from __future__ import annotations

import random
import time

import gevent
from gevent.pool import Pool
from locust import User, constant, task

from loadkit.arrivals import ArrivalSchedule
from loadkit.client import RequestCancelled, RequestSpec
from loadkit.locust_plugin import capacity
from loadkit.locust_plugin.reporting import report
from loadkit.locust_plugin.state import STATE


class LLMUser(User):
    """Subclass it in a locustfile."""

    abstract = True
    wait_time = constant(0)

    @task
    def next_request(self) -> None:
        if STATE.policy is None:  # the run could not be prepared; the error was logged
            gevent.sleep(1.0)
            return
        if not capacity.open_loop_active():
            self.send(STATE.next_spec())
            return
        if STATE.stopping_at:  # a schedule ended by the run's end is not started again
            gevent.sleep(1.0)
            return
        schedule = capacity.open_loop_schedule(random.Random())
        if schedule is not None:
            self.open_loop(schedule)

    def send(self, spec: RequestSpec) -> None:
        policy = STATE.policy
        assert policy is not None
        estimate = capacity.reserve(spec, STATE.cached_prefix_tokens)
        if estimate is None:  # the cost guard: this request could pass the cap
            capacity.stop_for_budget(self.environment)
            gevent.sleep(1.0)
            return
        try:
            record = policy.send(spec)
        except RequestCancelled as cancelled:
            capacity.settle(estimate, cancelled.record)
            report(self.environment, cancelled.record)
            raise cancelled.__cause__ or cancelled from None
        capacity.settle(estimate, record)
        report(self.environment, record)

    def open_loop(self, schedule: ArrivalSchedule) -> None:
        settings = capacity.SETTINGS
        assert settings is not None
        pool = Pool(settings.in_flight_per_user)
        counts = STATE.aggregate
        due: int | None = None  # the next start, taken from the schedule and not yet made
        try:
            while True:
                due = schedule.next_start()
                delay = (due - time.perf_counter_ns()) / 1e9
                if delay > 0:
                    gevent.sleep(delay)
                if STATE.stopping_at:  # the run is ending: no more starts are owed
                    break
                if pool.full():
                    counts.schedule["cap_waits"] += 1
                    pool.wait_available()
                late_ms = (time.perf_counter_ns() - due) / 1e6
                counts = STATE.aggregate  # a worker's report swaps it for a new one
                counts.schedule["scheduled"] += 1
                if late_ms > capacity.LATE_START_MS:
                    counts.schedule["late"] += 1
                counts.start_lateness.add(max(late_ms, 1e-3))
                spec = STATE.next_spec()
                spec.t_intended = due
                pool.spawn(self.send, spec)
                due = None
            pool.join()  # in flight: finished, unless the user is killed first (then cancelled)
        finally:
            # Starts whose time came while waiting for the cap, never made: counted, not lost.
            now = STATE.stopping_at or time.perf_counter_ns()
            while due is not None and due <= now:
                STATE.aggregate.schedule["not_started"] += 1
                due = schedule.next_start()
            pool.kill(block=True)  # their streams end as cancelled, each one reported
