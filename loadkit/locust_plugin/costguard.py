"""The cost guard: a spending cap for targets that cost money, each request's worst case
reserved before it is sent, and the whole run stopped before the cap could be passed."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from loadkit.budget import worst_case_cost
from loadkit.client import RequestSpec
from loadkit.locust_plugin.capacity_settings import Settings
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.run import Run
from loadkit.record import ResultRecord
from loadkit.slo import SLOError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

BUDGET_KEY = "loadkit_budget_exhausted"


def check_spending_cap(target: str, max_cost_usd: float) -> None:
    """A target that is not loopback may cost money: it needs a cap."""
    host = urlparse(target).hostname or ""
    if host not in LOOPBACK and max_cost_usd <= 0:
        raise SLOError(
            f"the target {host} is not loopback: give --max-cost-usd to cap the estimated spend"
        )


def reserve(settings: Settings | None, spec: RequestSpec, cached_tokens: int) -> float | None:
    """The estimate reserved for ``spec``, 0.0 without a cap, None if the cap forbids it."""
    if settings is None or settings.budget is None:
        return 0.0
    estimate = worst_case_cost(
        spec.model, spec.speed, spec.prompt_tokens_target, spec.max_tokens, cached_tokens,
        spec.cache_ttl,
    )  # fmt: skip
    return estimate if settings.budget.reserve(estimate) else None


def settle(settings: Settings | None, estimate: float, record: ResultRecord) -> None:
    if settings is not None and settings.budget is not None:
        settings.budget.settle(estimate, record.cost_usd)


def budget_exhausted(settings: Settings | None) -> bool:
    return bool(settings and settings.budget and settings.budget.exhausted)


def stop_for_budget(run: Run) -> None:
    """Stop the whole run once (from a local runner; workers tell the master in reports)."""
    import gevent

    environment = run.environment
    if run.budget_stopping or not run.role.decides:
        return
    run.budget_stopping = True
    settings = run.capacity
    cap = settings.budget.cap_usd if settings and settings.budget else 0
    say(f"cost guard: the next request would pass the ${cap:.4f} cap; stopping")
    runner = environment.runner
    gevent.spawn(runner.quit if environment.parsed_options.headless else runner.stop)


def _report(run: Run, data: dict[str, Any]) -> None:
    data[BUDGET_KEY] = budget_exhausted(run.capacity)


def _worker_report(run: Run, data: dict[str, Any]) -> None:
    if data.get(BUDGET_KEY):
        stop_for_budget(run)


def install(events: Any, run: Run) -> None:
    """Across processes: a worker's exhausted budget stops the whole run."""
    events.report_to_master.add_listener(lambda client_id, data, **_: _report(run, data))
    events.worker_report.add_listener(lambda client_id, data, **_: _worker_report(run, data))
