"""The Locust user: streaming Messages requests drawn from the workload.

Closed loop (the default): one request after another, or, when the workload has a
``conversation`` (or ``tools``), one conversation after another (``loadkit.conversation``).
Open loop (``--arrival-rate``): each user starts its share of the total rate on schedule,
each request in its own greenlet, up to its share of the in-flight cap; the request's latency
counts from its scheduled start (single requests: conversations are closed loop).
"""

from __future__ import annotations

import random

import gevent
from gevent.pool import Pool
from locust import User, constant, task

from loadkit import conversation
from loadkit.arrivals import ArrivalSchedule
from loadkit.client import RequestCancelled, RequestSpec
from loadkit.locust_plugin import costguard, openloop, trace_replay
from loadkit.locust_plugin.reporting import report
from loadkit.locust_plugin.run import Run, run_of
from loadkit.locust_plugin.starts import send_on_schedule
from loadkit.record import ResultRecord


class LLMUser(User):
    """Subclass it in a locustfile."""

    abstract = True
    wait_time = constant(0)

    @property
    def loadkit_run(self) -> Run:
        return run_of(self.environment)

    @task
    def next_request(self) -> None:
        run = self.loadkit_run
        if run.policy is None:  # the run could not be prepared; the error was logged
            gevent.sleep(1.0)
            return
        if run.trace is not None:  # --trace: the trace says what to send, and when
            trace_replay.replay(self, run)
            return
        workload = run.workload
        assert workload is not None
        if not openloop.open_loop_active(run.capacity):
            if conversation.in_conversations(workload):
                self.converse(run)
            else:
                self.send(conversation.with_agentic(run.next_spec(), workload))
            return
        if run.stopping_at:  # a schedule ended by the run's end is not started again
            gevent.sleep(1.0)
            return
        schedule = openloop.open_loop_schedule(run.capacity, random.Random())
        if schedule is not None:
            self.open_loop(schedule)

    def converse(self, run: Run) -> None:
        """One conversation, turn after turn; a failed turn ends it."""
        assert run.workload is not None and run.prompts is not None and run.sampler is not None
        rng = random.Random(run.sampler.rng.getrandbits(64))
        state = conversation.start(run.next_spec(), run.workload, run.prompts, rng)
        while (step := state.next_step()) is not None:
            if step.wait_s > 0:
                gevent.sleep(step.wait_s)
            if run.stopping_at:  # the run is ending: no new turn
                return
            record = self.send(step.spec)
            if record is None:  # the cost guard refused it
                return
            state.take(record, step.spec.answer)

    def send(self, spec: RequestSpec) -> ResultRecord | None:
        """Send, account and report ``spec``; its record (None: the cost guard refused it)."""
        run = self.loadkit_run
        policy = run.policy
        assert policy is not None
        estimate = costguard.reserve(run.capacity, spec, run.cached_prefix_tokens)
        if estimate is None:  # the cost guard: this request could pass the cap
            costguard.stop_for_budget(run)
            gevent.sleep(1.0)
            return None
        run.in_flight.started(spec.model, spec.speed)
        try:
            record = policy.send(spec)
        except RequestCancelled as cancelled:
            costguard.settle(run.capacity, estimate, cancelled.record)
            report(run, cancelled.record)
            raise cancelled.__cause__ or cancelled from None
        finally:
            run.in_flight.ended(spec.model, spec.speed)
        costguard.settle(run.capacity, estimate, record)
        report(run, record)
        return record

    def open_loop(self, schedule: ArrivalSchedule) -> None:
        run = self.loadkit_run
        settings = run.capacity
        assert settings is not None
        # each spec is drawn when its start is taken from the schedule, before its time comes
        starts = ((due, run.next_spec()) for due in iter(schedule.next_start, None))
        send_on_schedule(run, Pool(settings.in_flight_per_user), starts, self.send)
