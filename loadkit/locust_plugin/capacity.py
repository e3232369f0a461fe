"""Capacity planning and CI gates in Locust: open-loop arrivals, sweeps, SLOs, the cost guard,
the HTML report.

Every process reads the same settings from ``parsed_options`` (the master forwards its own,
plus what it derives, with each start). Exit codes: 2 a run that cannot start (bad input),
3 a scenario check failed, 4 an SLO was breached; with SLOs the run is judged by them alone.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from locust import LoadTestShape
from locust.runners import MasterRunner, WorkerRunner

from loadkit.aggregate import Slice, combine
from loadkit.arrivals import ArrivalSchedule
from loadkit.budget import Budget, worst_case_cost
from loadkit.client import RequestSpec
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.run import Run, RunPlan, run_of
from loadkit.record import ResultRecord
from loadkit.report import WINDOW_S as REPORT_WINDOW_S
from loadkit.report import write_report
from loadkit.slo import SLO, SLOError, judge, junit_xml, meets_request_slos, parse_slos, slo_summary
from loadkit.sweep import SweepPlan, analyse, clearly_broken, format_sweep

log = logging.getLogger("loadkit")
EXIT_SLO = 4
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WINDOW_S = REPORT_WINDOW_S
LATE_START_MS = 1.0  # an open-loop start this much after its schedule counts as late
BUDGET_KEY = "loadkit_budget_exhausted"


def add_options(parser: Any) -> None:
    parser.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="Open loop: requests/s started in total (split across users and workers), "
        "whether or not earlier ones finished; 0: closed loop (each user waits for its answer)",
    )
    parser.add_argument(
        "--arrival",
        default="poisson",
        choices=["poisson", "constant"],
        help="Open-loop arrival process",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=2000,
        help="Open loop: most requests in flight at once (in total); later starts wait and "
        "are counted as late",
    )
    parser.add_argument(
        "--sweep",
        default="",
        choices=["", "users", "rate"],
        help="Step the user count (closed loop) or the arrival rate (open loop); needs "
        "locustfiles/sweep.py",
    )
    parser.add_argument("--sweep-start", type=float, default=10.0, help="Sweep: first step's load")
    parser.add_argument("--sweep-step", type=float, default=10.0, help="Sweep: load added per step")
    parser.add_argument(
        "--sweep-step-duration", type=float, default=30.0, help="Sweep: seconds per step"
    )
    parser.add_argument("--sweep-stop", type=float, default=100.0, help="Sweep: last step's load")
    parser.add_argument(
        "--slo",
        action="append",
        include_in_web_ui=False,
        help="An objective, repeatable: ttft_p95_ms<=1500, otps_p50>=40, error_rate<=0.01, "
        "model=claude-opus-4-6,speed=fast:ttft_p99_ms<=2500 (also: slos: in the workload file)",
    )
    parser.add_argument("--junit", default="", help="Write one JUnit test case per SLO here")
    parser.add_argument(
        "--max-cost-usd",
        type=float,
        default=0.0,
        help="Stop the run before the estimated spend passes this (required for any target "
        "that is not loopback)",
    )
    parser.add_argument(
        "--report", default="", help="Write a self-contained HTML report (plots) to this path"
    )


@dataclass
class Settings:
    """What every process needs, derived once per run from the options."""

    slos: list[SLO]
    plan: SweepPlan | None
    sweep_start_wall: float
    run_start_wall: float
    rate_per_user: float  # open loop (0: closed loop); for a rate sweep, the first step's
    users_total: int
    in_flight_per_user: int
    arrival: str
    windows: bool
    budget: Budget | None


WALL_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def _options_slos(options: Any, workload_slos: list[str]) -> list[SLO]:
    return parse_slos([*workload_slos, *(getattr(options, "slo", None) or [])])


def _plan(options: Any) -> SweepPlan | None:
    if not options.sweep:
        return None
    return SweepPlan(
        options.sweep,
        options.sweep_start,
        options.sweep_step,
        options.sweep_step_duration,
        options.sweep_stop,
    )


def check_spending_cap(target: str, max_cost_usd: float) -> None:
    """A target that is not loopback may cost money: it needs a cap."""
    host = urlparse(target).hostname or ""
    if host not in LOOPBACK and max_cost_usd <= 0:
        raise SLOError(
            f"the target {host} is not loopback: give --max-cost-usd to cap the estimated spend"
        )


def prepare_master(
    run: Run, workload_slos: list[str], target: str, key_kind: str
) -> tuple[float, float, int]:
    """On the master (or local runner) at each start: check the settings; returns the start
    (time.time()), each process's share of the cost cap and the users in total."""
    environment = run.environment
    options = environment.parsed_options
    _options_slos(options, workload_slos)  # raises SLOError naming the bad expression
    plan = _plan(options)
    if plan is not None:
        if plan.kind == "rate" and options.arrival_rate <= 0:
            options.arrival_rate = plan.start
        if plan.kind == "users" and options.arrival_rate > 0:
            raise SLOError("--sweep users steps closed-loop users: leave out --arrival-rate")
        if environment.shape_class is None:
            raise SLOError("--sweep needs the sweep load shape: use -f locustfiles/sweep.py")
    if key_kind == "real":  # an emulator costs nothing
        check_spending_cap(target, options.max_cost_usd)
    now = time.time()
    if environment.shape_class is not None:
        # The shape's steps on the sweep's clock, as Locust's master does after test_start (a
        # local runner's shape clock started before the embedded emulator did).
        environment.shape_class.reset_time()
    processes = 1
    if isinstance(environment.runner, MasterRunner):
        processes = max(1, len(environment.runner.clients.ready) or options.expect_workers or 1)
    return now, options.max_cost_usd / processes, max(1, int(options.num_users or 1))


def prepare_process(run: Run, run_plan: RunPlan) -> None:
    """On every process that runs users, at each start."""
    options = run.options
    users = run_plan.users_total
    plan = _plan(options)
    cap = run_plan.cost_cap_per_process
    run.capacity = Settings(
        slos=_options_slos(options, list(run_plan.workload_slos)),
        plan=plan,
        sweep_start_wall=run_plan.sweep_start,
        run_start_wall=run_plan.run_start,
        rate_per_user=options.arrival_rate / users,
        users_total=users,
        in_flight_per_user=max(1, math.ceil(options.max_in_flight / users)),
        arrival=options.arrival,
        windows=bool(options.report),
        budget=Budget(cap) if cap > 0 else None,
    )


def rate_per_user_at(settings: Settings, wall: float) -> float:
    """The open-loop rate of one user's share at the wall-clock time ``wall``."""
    plan = settings.plan
    if plan is None or plan.kind != "rate":
        return settings.rate_per_user
    step = plan.step_at(wall - settings.sweep_start_wall)
    return plan.load(step) / settings.users_total if step is not None else 0.0


def next_rate_change(settings: Settings, wall: float) -> float | None:
    """The wall-clock time of the first rate change after ``wall`` (None: none comes)."""
    if settings.plan is None or settings.plan.kind != "rate":
        return None
    plan = settings.plan
    elapsed = wall - settings.sweep_start_wall
    if elapsed < 0:
        return settings.sweep_start_wall
    step = int(elapsed // plan.step_duration_s) + 1
    return settings.sweep_start_wall + step * plan.step_duration_s if step <= plan.steps else None


def open_loop_active(settings: Settings | None) -> bool:
    return settings is not None and settings.rate_per_user > 0


def open_loop_schedule(settings: Settings | None, rng: random.Random) -> ArrivalSchedule | None:
    if settings is None or settings.rate_per_user <= 0:
        return None
    started_wall = time.time()
    started_ns = time.perf_counter_ns()

    def changes_after(seconds: float) -> float | None:
        change = next_rate_change(settings, started_wall + seconds)
        return None if change is None else change - started_wall

    return ArrivalSchedule(
        lambda seconds: rate_per_user_at(settings, started_wall + seconds),
        settings.arrival,  # type: ignore[arg-type]
        rng,
        start_ns=started_ns,
        changes_after=changes_after,
    )


def slices_for(settings: Settings | None, record: ResultRecord) -> list[Slice]:
    if settings is None:
        return []
    started = ((record.t_intended or record.t_send or record.t_end) + WALL_OFFSET_NS) / 1e9
    out: list[Slice] = []
    if settings.plan is not None:
        step = settings.plan.step_at(started - settings.sweep_start_wall)
        if step is not None:
            out.append(("step", step))
    if settings.windows:
        out.append(("window", int((started - settings.run_start_wall) // WINDOW_S) * WINDOW_S))
    return out


def is_good(settings: Settings | None, record: ResultRecord) -> bool:
    slos = settings.slos if settings is not None else []
    return bool(slos) and meets_request_slos(record, slos)


# The cost guard ---------------------------------------------------------------------------
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
    if run.budget_stopping or isinstance(environment.runner, WorkerRunner):
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


# The sweep shape --------------------------------------------------------------------------
class SweepShape(LoadTestShape):
    """Steps users (or holds them while the rate steps) and ends the sweep early once two
    steps in a row, or one by a wide margin, broke an SLO."""

    # -u is read (the users that share a rate sweep's arrivals): Locust must not call it ignored
    use_common_options = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Locust's shape is unannotated
        self._broken_steps = 0
        self._judged = -1

    def tick(self) -> tuple[int, float] | None:
        if self.runner is None:
            return None
        options = self.runner.environment.parsed_options
        plan = _plan(options) if options is not None else None
        if options is None or plan is None:
            return None
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        step = plan.step_at(elapsed)
        if step is None:
            return None
        # Judge the previous step once the workers' reports for it are in (3 s cadence).
        if step - 1 > self._judged and elapsed - step * plan.step_duration_s > 3.5:
            self._judged = step - 1
            run = run_of(self.runner.environment)
            workload_slos = list(run.plan.workload_slos) if run.plan else []
            slos = _options_slos(options, workload_slos)
            groups = run.aggregate.slices("step").get(step - 1)
            if slos and groups:
                from loadkit.sweep import step_row

                row = step_row(plan, step - 1, groups, slos)
                self._broken_steps = 0 if row["met_slos"] else self._broken_steps + 1
                if self._broken_steps >= 2 or clearly_broken(row):
                    log.info("loadkit sweep: SLOs clearly broken at step %d; stopping", step - 1)
                    return None
        users = int(plan.load(step)) if plan.kind == "users" else int(options.num_users or 1)
        return max(1, users), max(1.0, float(users))


# The end of a run -------------------------------------------------------------------------
def finish(run: Run, data: dict[str, Any]) -> list[str]:
    """Sweep table, SLO verdicts, JUnit, report; returns the breached SLO lines."""
    options = run.options
    aggregate = run.aggregate
    settings = run.capacity
    if aggregate.schedule:
        data["open_loop"] = {
            **dict(aggregate.schedule),
            "start_lateness_ms_p50": aggregate.start_lateness.quantile(0.5),
            "start_lateness_ms_p99": aggregate.start_lateness.quantile(0.99),
        }
        open_loop = data["open_loop"]
        say(
            f"open loop: {open_loop.get('scheduled', 0)} started, {open_loop.get('late', 0)} of "
            f"them more than {LATE_START_MS:g} ms late ({open_loop.get('cap_waits', 0)} waited "
            f"for the in-flight cap), {open_loop.get('not_started', 0)} due but not started "
            f"when the run ended; start lateness p50 "
            f"{open_loop['start_lateness_ms_p50'] or 0:.2f} ms, p99 "
            f"{open_loop['start_lateness_ms_p99'] or 0:.2f} ms"
        )
    slos = settings.slos if settings else []
    plan = _plan(options)
    if plan is not None:
        sweep_start = settings.sweep_start_wall if settings else aggregate.started_at
        elapsed = (aggregate.ended_at or time.time()) - sweep_start
        completed = min(plan.steps, int(elapsed // plan.step_duration_s + 1e-6))
        data["sweep"] = analyse(plan, aggregate, slos, completed)
        say(format_sweep(data["sweep"]))
    breaches: list[str] = []
    if slos:
        verdicts = judge(aggregate, slos)
        good = aggregate.total().totals["good"]
        data["slos"] = slo_summary(verdicts, good, aggregate.elapsed_s)
        for verdict in verdicts:
            say(verdict.line())
        say(f"goodput: {data['slos']['goodput_per_s']} requests/s met every SLO")
        breaches = [v.line() for v in verdicts if not v.passed]
        if options.junit:
            Path(options.junit).write_text(
                junit_xml(verdicts, data["run_id"], data["duration_s"]), encoding="utf-8"
            )
            say(f"loadkit: JUnit results written to {options.junit}")
    if (settings is not None and settings.budget is not None) or options.max_cost_usd > 0:
        data["cost_guard"] = {
            "cap_usd": options.max_cost_usd,
            "spent_usd": data["total"]["cost_usd"],
            "stopped": run.budget_stopping,
        }
    windows = aggregate.slices("window")
    if windows:
        data["over_time"] = over_time(windows)
    if options.report:
        write_report(aggregate, data, options.report)
        say(f"loadkit: HTML report written to {options.report}")
    return breaches


def over_time(windows: dict[int, dict[tuple[str, str], Any]]) -> list[dict[str, Any]]:
    """Per time window (by intended start): requests, TTFT and schedule-relative TTFT."""
    rows = []
    for start, groups in windows.items():
        group = combine(groups.values())
        rows.append(
            {
                "t_s": start,
                "requests": group.totals["requests"],
                "ok": group.outcomes.get("ok", 0),
                "output_tokens": group.totals["output_tokens"],
                "ttft_ms_p50": group.sketches["ttft_ms"].quantile(0.5),
                "schedule_ttft_ms_p50": group.sketches["schedule_ttft_ms"].quantile(0.5),
                "schedule_ttft_ms_p99": group.sketches["schedule_ttft_ms"].quantile(0.99),
            }
        )
    return rows


def install(events: Any, run: Run) -> None:
    """The cost guard across processes: a worker's exhausted budget stops the whole run."""
    events.report_to_master.add_listener(lambda client_id, data, **_: _report(run, data))
    events.worker_report.add_listener(lambda client_id, data, **_: _worker_report(run, data))
