"""Fan-out of a finished request: Locust's statistics, loadkit's aggregate, and sinks."""

from __future__ import annotations

from locust.event import EventHook

from loadkit.fallback_checks import record_violations
from loadkit.locust_plugin import capacity
from loadkit.locust_plugin.run import Run
from loadkit.record import Outcome, ResultRecord

#: Fired with ``record=`` and ``run=`` for every finished request (sinks listen here).
result_event = EventHook()


class RequestFailed(Exception):
    """A failed request as Locust shows it: one failure row per outcome and error type."""


def failure_message(record: ResultRecord) -> str:
    return f"{record.outcome.value}: {record.error_type}"


def report(run: Run, record: ResultRecord) -> None:
    """One Locust entry per request that ended, named ``<model> <speed>`` (the speed asked
    for): response time = E2E, response length = output tokens (Locust's LLM convention).

    A request cut by the end of the run is not in Locust's statistics: it did not fail, and
    its partial time is no response time. loadkit's own views count it as cancelled.
    """
    environment = run.environment
    if record.outcome is not Outcome.CANCELLED:
        e2e = record.e2e_ms
        environment.events.request.fire(
            request_type="LLM",
            name=f"{record.model} {record.speed}",
            response_time=e2e if e2e is not None else 0.0,
            response_length=record.output_tokens,
            exception=None if record.ok else RequestFailed(failure_message(record)),
            context={"request_id": record.request_id},
        )
    policy = run.policy
    violations = record_violations(record, policy.settings) if policy is not None else None
    settings = run.capacity
    slices = capacity.slices_for(settings, record)
    dataset = run.datasets.index_of(record.dataset) if run.datasets and record.dataset else None
    if dataset is not None:
        slices.append(("dataset", dataset))
    run.aggregate.add(record, violations, slices, capacity.is_good(settings, record))
    result_event.fire(record=record, run=run)
