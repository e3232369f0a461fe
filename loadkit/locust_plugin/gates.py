"""The end of a run's capacity figures: open-loop counts, the sweep table, SLO verdicts with
JUnit, the cost guard's figures, time windows and the HTML report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loadkit.aggregate import combine
from loadkit.locust_plugin.capacity import sweep_plan
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.openloop import LATE_START_MS
from loadkit.locust_plugin.run import Run
from loadkit.report import write_report
from loadkit.slo import judge, junit_xml, slo_summary
from loadkit.sweep import analyse, format_sweep

EXIT_SLO = 4


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
    plan = sweep_plan(options)
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
