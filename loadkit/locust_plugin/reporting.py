"""Fan-out of a finished request: Locust's statistics, loadkit's aggregate, and sinks."""

from __future__ import annotations

from typing import Any

from locust.event import EventHook

from loadkit.fallback_checks import record_violations
from loadkit.locust_plugin import capacity
from loadkit.locust_plugin.state import STATE
from loadkit.record import Outcome, ResultRecord

#: Fired with ``record=`` and ``environment=`` for every finished request (sinks listen here).
result_event = EventHook()
CANCELLED_MESSAGE = "cancelled: run ended"


class RequestFailed(Exception):
    """A failed request as Locust shows it: one failure row per outcome and error type."""


def failure_message(record: ResultRecord) -> str:
    if record.outcome is Outcome.CANCELLED:
        return CANCELLED_MESSAGE
    return f"{record.outcome.value}: {record.error_type}"


def report(environment: Any, record: ResultRecord) -> None:
    name = f"{record.model} {record.speed}"
    fire = environment.events.request.fire
    e2e = record.e2e_ms
    exception = None if record.ok else RequestFailed(failure_message(record))
    fire(
        request_type="LLM",
        name=name,
        response_time=e2e if e2e is not None else 0.0,
        response_length=record.output_tokens,
        exception=exception,
        context={"request_id": record.request_id},
    )
    ttft = record.ttft_ms
    if ttft is not None:
        fire(
            request_type="TTFT",
            name=name,
            response_time=ttft,
            response_length=0,
            exception=None,
            context={},
        )
    policy = STATE.policy
    violations = record_violations(record, policy.settings) if policy is not None else None
    STATE.aggregate.add(record, violations, capacity.slices_for(record), capacity.is_good(record))
    result_event.fire(record=record, environment=environment)
