"""The end of a run's capacity figures: open-loop counts, the sweep table, SLO verdicts with
JUnit, the cost guard's figures, time windows and the HTML report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loadkit.aggregate import combine
from loadkit.locust_plugin import trace_replay
from loadkit.locust_plugin.capacity import sweep_plan
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.openloop import LATE_START_MS
from loadkit.locust_plugin.run import Run
from loadkit.report import write_report
from loadkit.results import CostGuardSection, OpenLoopSection, RunSummary, TimeWindow
from loadkit.slo import Verdict, judge, junit_xml, slo_summary
from loadkit.sweep import analyse, format_sweep

EXIT_SLO = 4


def measure(run: Run, summary: RunSummary) -> tuple[RunSummary, list[Verdict]]:
    """The summary with its capacity sections (open loop, sweep, SLOs, cost guard, time
    windows), printed as they are added; and the SLO verdicts, for JUnit and the gate."""
    options = run.options
    aggregate = run.aggregate
    settings = run.capacity
    sections: dict[str, Any] = {}
    if aggregate.schedule:
        counts = aggregate.schedule
        open_loop = OpenLoopSection(  # every count set, zeros too: the JSON shows them all
            scheduled=counts["scheduled"],
            late=counts["late"],
            cap_waits=counts["cap_waits"],
            not_started=counts["not_started"],
            start_lateness_ms_p50=aggregate.start_lateness.quantile(0.5),
            start_lateness_ms_p99=aggregate.start_lateness.quantile(0.99),
        )
        sections["open_loop"] = open_loop
        say(
            f"open loop: {open_loop.scheduled} started, {open_loop.late} of them more than "
            f"{LATE_START_MS:g} ms late ({open_loop.cap_waits} waited for the in-flight cap), "
            f"{open_loop.not_started} due but not started when the run ended; start lateness "
            f"p50 {open_loop.start_lateness_ms_p50 or 0:.2f} ms, p99 "
            f"{open_loop.start_lateness_ms_p99 or 0:.2f} ms"
        )
    if run.trace is not None:
        sections["trace"] = replayed = trace_replay.section(run.trace)
        say(trace_replay.describe(replayed))
    slos = settings.slos if settings else []
    plan = sweep_plan(options)
    if plan is not None:
        sweep_start = settings.sweep_start_wall if settings else aggregate.started_at
        elapsed = (aggregate.ended_at or time.time()) - sweep_start
        completed = min(plan.steps, int(elapsed // plan.step_duration_s + 1e-6))
        sections["sweep"] = analyse(plan, aggregate, slos, completed)
        say(format_sweep(sections["sweep"]))
    verdicts: list[Verdict] = []
    if slos:
        verdicts = judge(aggregate, slos)
        good = aggregate.total().totals["good"]
        sections["slos"] = slo_section = slo_summary(verdicts, good, aggregate.elapsed_s)
        for verdict in verdicts:
            say(verdict.line())
        say(f"goodput: {slo_section.goodput_per_s} requests/s met every SLO")
    if (settings is not None and settings.budget is not None) or options.max_cost_usd > 0:
        sections["cost_guard"] = CostGuardSection(
            cap_usd=options.max_cost_usd,
            spent_usd=summary.total.cost_usd,
            stopped=run.budget_stopping,
        )
    windows = aggregate.slices("window")
    if windows:
        sections["over_time"] = over_time(windows)
    return summary.model_copy(update=sections), verdicts


def publish(run: Run, summary: RunSummary, verdicts: list[Verdict]) -> list[str]:
    """JUnit and the HTML report, from the finished summary; returns the breached SLOs."""
    options = run.options
    if verdicts and options.junit:
        Path(options.junit).write_text(
            junit_xml(verdicts, summary.run_id, summary.duration_s), encoding="utf-8"
        )
        say(f"loadkit: JUnit results written to {options.junit}")
    if options.report:
        write_report(run.aggregate, summary, options.report)
        say(f"loadkit: HTML report written to {options.report}")
    return [v.line() for v in verdicts if not v.passed]


def over_time(windows: dict[int, dict[tuple[str, str], Any]]) -> list[TimeWindow]:
    """Per time window (by intended start): requests, TTFT and schedule-relative TTFT."""
    rows = []
    for start, groups in windows.items():
        group = combine(groups.values())
        rows.append(
            TimeWindow(
                t_s=start,
                requests=group.totals["requests"],
                ok=group.outcomes.get("ok", 0),
                output_tokens=group.totals["output_tokens"],
                ttft_ms_p50=group.sketches["ttft_ms"].quantile(0.5),
                schedule_ttft_ms_p50=group.sketches["schedule_ttft_ms"].quantile(0.5),
                schedule_ttft_ms_p99=group.sketches["schedule_ttft_ms"].quantile(0.99),
            )
        )
    return rows
