"""Capacity planning settings in Locust: the options of open loop, sweeps, SLOs and the cost
guard, and the ``Settings`` (``capacity_settings``) every process derives from them at each
start.

Every process reads the same settings from ``parsed_options`` and the master's ``RunPlan``.
The jobs live beside this module: ``openloop`` (arrivals), ``costguard`` (the spending cap),
``sweepshape`` (the sweep's steps) and ``gates`` (SLO verdicts, JUnit, report). Exit codes:
2 a run that cannot start (bad input), 3 a scenario check failed, 4 an SLO was breached.
"""

from __future__ import annotations

import math
import time
from typing import Any

from loadkit.aggregate import Slice
from loadkit.budget import Budget
from loadkit.locust_plugin.capacity_settings import Settings
from loadkit.locust_plugin.costguard import check_spending_cap
from loadkit.locust_plugin.run import Run, RunPlan
from loadkit.record import ResultRecord
from loadkit.report import WINDOW_S as REPORT_WINDOW_S
from loadkit.slo import SLO, SLOError, meets_request_slos, parse_slos
from loadkit.sweep import SweepPlan

WINDOW_S = REPORT_WINDOW_S
# Set on the master's options by the web UI (Locust sends custom options to the workers):
# every process then slices by time window, for the live charts.
LIVE_WINDOWS = "loadkit_live_windows"


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


WALL_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def options_slos(options: Any, workload_slos: list[str]) -> list[SLO]:
    return parse_slos([*workload_slos, *(getattr(options, "slo", None) or [])])


def sweep_plan(options: Any) -> SweepPlan | None:
    if not options.sweep:
        return None
    return SweepPlan(
        options.sweep,
        options.sweep_start,
        options.sweep_step,
        options.sweep_step_duration,
        options.sweep_stop,
    )


def prepare_master(
    run: Run, workload_slos: list[str], target: str, key_kind: str
) -> tuple[float, float, int]:
    """On the master (or local runner) at each start: check the settings; returns the start
    (time.time()), each process's share of the cost cap and the users in total."""
    environment = run.environment
    options = environment.parsed_options
    options_slos(options, workload_slos)  # raises SLOError naming the bad expression
    plan = sweep_plan(options)
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
    if run.role.collects:
        processes = max(1, len(environment.runner.clients.ready) or options.expect_workers or 1)
    return now, options.max_cost_usd / processes, max(1, int(options.num_users or 1))


def prepare_process(run: Run, run_plan: RunPlan) -> None:
    """On every process that runs users, at each start."""
    options = run.options
    users = run_plan.users_total
    plan = sweep_plan(options)
    cap = run_plan.cost_cap_per_process
    run.capacity = Settings(
        slos=options_slos(options, list(run_plan.workload_slos)),
        plan=plan,
        sweep_start_wall=run_plan.sweep_start,
        run_start_wall=run_plan.run_start,
        rate_per_user=options.arrival_rate / users,
        users_total=users,
        in_flight_per_user=max(1, math.ceil(options.max_in_flight / users)),
        arrival=options.arrival,
        windows=bool(options.report) or bool(getattr(options, LIVE_WINDOWS, False)),
        budget=Budget(cap) if cap > 0 else None,
    )


def slices_for(settings: Settings | None, record: ResultRecord) -> list[Slice]:
    # a conversation's requests, by turn index (summary's by_turn)
    out: list[Slice] = [("turn", record.turn)] if record.turn else []
    if settings is None:
        return out
    started = ((record.t_intended or record.t_send or record.t_end) + WALL_OFFSET_NS) / 1e9
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
