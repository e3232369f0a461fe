"""A self-contained HTML report (inline SVG, no scripts, no network) of one run.

It reads the run's ``RunSummary`` (the context, the tables, the sweep, the SLOs) and the
aggregate's per-window sketches (the over-time charts, per model x speed) and the run-wide
sketches (the CDFs): nothing is computed twice. Every number goes through ``loadkit.numbers``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from loadkit.aggregate import Aggregate, Group, combine
from loadkit.numbers import MISSING, number, percent, usd
from loadkit.report_breakdown import breakdowns
from loadkit.report_charts import Chart, Line, Point, colour, render
from loadkit.results import GroupFigures, RunSummary, SweepSection
from loadkit.sweep import capacity_label, capacity_line, unit, verdict

WINDOW_S = 5  # the width of the time windows the Locust layer slices by
QUANTILES = [i / 100 for i in range(1, 100)]
GroupKey = tuple[str, str]


def _name(key: GroupKey) -> str:
    return f"{key[0]} {key[1]}"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], first_left: bool = True) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    cls = ' class="first-left"' if first_left else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(charts: list[Chart]) -> str:
    return '<div class="charts">' + "".join(render(chart) for chart in charts) + "</div>"


def _when(iso: str) -> str:
    """An ISO 8601 time to the second, in UTC."""
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# the run's context ------------------------------------------------------------------------
def _context(summary: RunSummary) -> str:
    meta = summary.meta
    versions = meta.versions
    rows: list[tuple[str, str]] = [
        ("workload", f"{meta.workload} (sha256 {meta.workload_sha256[:12]})"),
        ("target", f"{meta.target} ({meta.target_kind})"),
        ("started", _when(meta.started_at)),
        ("duration", f"{number(summary.duration_s)} s"),
        ("users", MISSING if meta.users is None else number(meta.users)),
        ("spawn rate", MISSING if meta.spawn_rate is None else f"{number(meta.spawn_rate)}/s"),
        ("arrival", meta.arrival),
        ("processes", number(meta.processes)),
        ("HTTP stack", meta.http_stack),
        (
            "versions",
            f"loadkit {versions.loadkit}, Locust {versions.locust or MISSING}, "
            f"anthropic {versions.anthropic or MISSING}, Python {versions.python}",
        ),
        ("git commit", (meta.git_commit or MISSING)[:12]),
        ("run id", summary.run_id),
    ]
    if summary.exit_reason is not None:
        rows.append(("exit", f"{summary.exit_code}: {summary.exit_reason}"))
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="context">{cells}</table>'


# the summary table ------------------------------------------------------------------------
SUMMARY_HEADERS = [
    "model x speed", "requests", "failures", "TTFT p50 ms", "TTFT p90 ms", "TTFT p95 ms",
    "TTFT p99 ms", "OTPS p10", "OTPS p50", "OTPS p90", "E2E p50 ms", "E2E p95 ms",
    "E2E p99 ms", "requests/s", "output tok/s", "cost",
]  # fmt: skip


def _summary_row(name: str, g: GroupFigures) -> list[str]:
    return [
        name,
        number(g.requests),
        f"{number(g.failures)} ({percent(g.failure_ratio)})",
        number(g.ttft_ms.p50),
        number(g.ttft_ms.p90),
        number(g.ttft_ms.p95),
        number(g.ttft_ms.p99),
        number(g.otps.p10),
        number(g.otps.p50),
        number(g.otps.p90),
        number(g.e2e_ms.p50),
        number(g.e2e_ms.p95),
        number(g.e2e_ms.p99),
        number(g.requests_per_s),
        number(g.output_tokens_per_s),
        usd(g.cost_usd),
    ]


def _summary(summary: RunSummary) -> str:
    rows = [_summary_row(f"{g.model} {g.speed}", g) for g in summary.groups]
    rows.append(_summary_row("all", summary.total))
    return "<h2>Summary</h2>" + _table(SUMMARY_HEADERS, rows)


# distributions ----------------------------------------------------------------------------
def _colours(aggregate: Aggregate) -> dict[GroupKey, str]:
    """One colour per model x speed, the same in every chart."""
    return {key: colour(i) for i, key in enumerate(sorted(aggregate.groups))}


def _cdf(aggregate: Aggregate, sketch: str, colours: dict[GroupKey, str]) -> list[Line]:
    lines = []
    for key, group in sorted(aggregate.groups.items()):
        values = [group.sketches[sketch].quantile(q) for q in QUANTILES]
        points = [(v, q * 100) for v, q in zip(values, QUANTILES, strict=True) if v is not None]
        lines.append(Line(_name(key), points, colours[key], series=_name(key)))
    return lines


def _distributions(aggregate: Aggregate, colours: dict[GroupKey, str]) -> str:
    ttft = Chart("TTFT distribution (CDF)", "TTFT (ms)", "percentile",
                 _cdf(aggregate, "ttft_ms", colours))  # fmt: skip
    otps = Chart("OTPS distribution (CDF)", "output tokens/s per request", "percentile",
                 _cdf(aggregate, "otps", colours))  # fmt: skip
    return "<h2>Distributions</h2>" + _charts([ttft, otps])


# over time --------------------------------------------------------------------------------
Measure = Callable[[Group], float | None]


def _full_windows(aggregate: Aggregate) -> dict[int, dict[GroupKey, Group]]:
    windows = aggregate.slices("window")
    if len(windows) > 1 and max(windows) + WINDOW_S > aggregate.elapsed_s + min(windows):
        windows.pop(max(windows))  # the last window is cut short by the end of the run
    return windows


def _per_group(
    windows: dict[int, dict[GroupKey, Group]],
    colours: dict[GroupKey, str],
    measures: list[tuple[str, Measure, bool]],
) -> list[Line]:
    """One line per model x speed and measure (label suffix, measure, dashed)."""
    first = min(windows)
    lines = []
    for key in sorted(colours):
        for suffix, measure, dashed in measures:
            points: list[Point] = []
            for start, groups in windows.items():
                group = groups.get(key)
                value = None if group is None else measure(group)
                if value is not None:
                    points.append((start - first, value))
            name = f"{_name(key)} {suffix}".strip()
            lines.append(Line(name, points, colours[key], dashed=dashed, series=_name(key)))
    return lines


def _quantile(sketch: str, q: float) -> Measure:
    return lambda group: group.sketches[sketch].quantile(q)


def _rate(total: str) -> Measure:
    return lambda group: group.totals[total] / WINDOW_S


def _over_time(aggregate: Aggregate, summary: RunSummary, colours: dict[GroupKey, str]) -> str:
    windows = _full_windows(aggregate)
    if not windows:
        return ""
    x_label = f"seconds into the run ({WINDOW_S} s windows, by intended start)"
    charts = [
        Chart("TTFT over time: p50 (solid), p95 (dashed)", x_label, "ms",
              _per_group(windows, colours, [("p50", _quantile("ttft_ms", 0.5), False),
                                            ("p95", _quantile("ttft_ms", 0.95), True)])),
        Chart("OTPS over time: p50 (solid), p10 (dashed)", x_label, "output tokens/s",
              _per_group(windows, colours, [("p50", _quantile("otps", 0.5), False),
                                            ("p10", _quantile("otps", 0.1), True)])),
    ]  # fmt: skip
    if summary.open_loop is not None:
        charts.append(
            Chart("Schedule-relative TTFT over time: p50 (solid), p95 (dashed)", x_label,
                  "ms from the intended start",
                  _per_group(windows, colours,
                             [("p50", _quantile("schedule_ttft_ms", 0.5), False),
                              ("p95", _quantile("schedule_ttft_ms", 0.95), True)]))
        )  # fmt: skip
    charts += [
        Chart("Output tokens/s over time", x_label, "tokens/s",
              _per_group(windows, colours, [("", _rate("output_tokens"), False)])),
        Chart("Requests/s started over time", x_label, "requests/s",
              _per_group(windows, colours, [("", _rate("requests"), False)])),
    ]  # fmt: skip
    first = min(windows)
    failed: list[Point] = []
    limited: list[Point] = []
    for start, groups in windows.items():
        group = combine(groups.values())
        done = group.outcomes.get("ok", 0) + group.outcomes.get("cancelled", 0)
        failed.append((start - first, group.totals["requests"] - done))
        limited.append((start - first, group.outcomes.get("rate_limited", 0)))
    charts.append(
        Chart("Failed requests and 429s per window (all models)", x_label, "requests",
              [Line("failed requests", failed, colour(1), series="all"),
               Line("of which 429 (rate limited)", limited, colour(3), dashed=True,
                    series="all")])
    )  # fmt: skip
    return "<h2>Over time</h2>" + _charts(charts)


# the sweep --------------------------------------------------------------------------------
def _sweep_charts(sweep: SweepSection) -> list[Chart]:
    """The metric(s) the sweep's SLOs name (TTFT p95 without SLOs) and the achieved rate,
    both over the offered load, with the capacity marked."""
    what = unit(sweep)
    x_label = "users" if sweep.kind == "users" else "offered requests/s"
    markers = [] if sweep.capacity is None else [(sweep.capacity, capacity_label(sweep))]
    metrics: dict[str, list[str]] = {}  # metric -> the SLOs (texts) on it
    for step in sweep.steps:
        for v in step.slos:
            if v.slo not in metrics.setdefault(v.metric, []):
                metrics[v.metric].append(v.slo)
    charts = []
    for metric, slos in metrics.items():
        lines, thresholds = [], []
        for i, slo in enumerate(slos):
            points = [
                (step.offered, v.value)
                for step in sweep.steps
                for v in step.slos
                if v.slo == slo and v.value is not None
            ]
            lines.append(Line(f"{metric} per step", points, colour(i), dots=True, series=slo))
            threshold = next(v.threshold for s in sweep.steps for v in s.slos if v.slo == slo)
            thresholds.append((threshold, f"SLO {slo}"))
        if len(slos) > 1:
            lines = [
                Line(f"{line.series} per step", line.points, line.colour, dots=True,
                     series=line.series)
                for line in lines
            ]  # fmt: skip
        charts.append(Chart(f"{metric} by offered load ({what})", x_label, metric, lines,
                            markers, thresholds))  # fmt: skip
    if not metrics:
        points = [(s.offered, s.ttft_ms.p95) for s in sweep.steps if s.ttft_ms.p95 is not None]
        line = Line("TTFT p95 per step", points, colour(0), dots=True)
        charts.append(
            Chart(f"TTFT p95 by offered load ({what})", x_label, "TTFT p95 (ms)", [line], markers)
        )
    rates = [(s.offered, s.achieved_requests_per_s) for s in sweep.steps]
    achieved = [Line("achieved requests/s", rates, colour(2), dots=True)]
    if sweep.kind == "rate":
        offered = [(s.offered, s.offered) for s in sweep.steps]
        achieved.append(Line("offered requests/s", offered, "#888", dashed=True))
    charts.append(Chart(f"Achieved requests/s by offered load ({what})", x_label,
                        "requests/s (successful)", achieved, markers))  # fmt: skip
    return charts


SWEEP_HEADERS = [
    "step", "offered", "achieved req/s", "held", "output tok/s", "TTFT p50 ms", "TTFT p95 ms",
    "TTFT p99 ms", "sched. TTFT p95 ms", "OTPS p50", "errors", "429s", "late starts", "verdict",
]  # fmt: skip


def _sweep(sweep: SweepSection) -> str:
    rows = [
        [
            number(r.step), number(r.offered), number(r.achieved_requests_per_s), percent(r.held),
            number(r.output_tokens_per_s), number(r.ttft_ms.p50), number(r.ttft_ms.p95),
            number(r.ttft_ms.p99), number(r.schedule_ttft_ms_p95), number(r.otps_p50),
            percent(r.error_rate), percent(r.rate_limited_rate), percent(r.late_start_share),
            verdict(r),
        ]
        for r in sweep.steps
    ]  # fmt: skip
    notes = "".join(
        f"<p>Step {r.step}: the "
        + ("load generator" if r.fell_behind == "generator" else "target")
        + f" fell behind: {_esc(r.behind_reason or '')}</p>"
        for r in sweep.steps
        if r.fell_behind
    )
    return (
        "<h2>Sweep</h2>"
        + f"<p><b>{_esc(capacity_line(sweep))}</b></p>"
        + _charts(_sweep_charts(sweep))
        + _table(SWEEP_HEADERS, rows, first_left=False)
        + notes
    )


def _slos(summary: RunSummary) -> str:
    slos = summary.slos
    if slos is None:
        return ""
    rows = [[r.slo, r.scope, number(r.value), "pass" if r.passed else "FAIL"] for r in slos.results]
    return (
        "<h2>SLOs</h2>"
        + _table(["SLO", "scope", "measured", "result"], rows)
        + f"<p>Goodput: {number(slos.goodput_per_s)} requests/s met every SLO "
        f"({number(slos.good_requests)} requests).</p>"
    )


STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1800px}"
    "table{border-collapse:collapse;margin:8px 0 24px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
    "th{background:#f4f4f4}table.first-left td:first-child{text-align:left}"
    "table.context th,table.context td{text-align:left}"
    ".charts{display:flex;flex-wrap:wrap}svg{margin:8px 16px 8px 0;background:#fff}"
)


def render_report(aggregate: Aggregate, summary: RunSummary) -> str:
    colours = _colours(aggregate)
    meta = summary.meta
    title = f"loadkit report: {meta.workload} against {meta.target}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        _context(summary),
        f"<p>{number(summary.total.requests)} requests in {number(summary.duration_s)} s, "
        f"{number(summary.total.failures)} failed, estimated cost "
        f"{usd(summary.total.cost_usd)}.</p>",
        _summary(summary),
        breakdowns(summary, _table),
    ]
    if summary.sweep is not None:
        body.append(_sweep(summary.sweep))
    body.append(_slos(summary))
    body.append(_over_time(aggregate, summary, colours))
    body.append(_distributions(aggregate, colours))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}'
        f"</title><style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n"
    )


def write_report(aggregate: Aggregate, summary: RunSummary, path: str | Path) -> None:
    Path(path).write_text(render_report(aggregate, summary), encoding="utf-8")
