# ruff: noqa: E501 - SVG and HTML fragments read best on one line each
"""A self-contained HTML report (inline SVG, no scripts, no network) of one run.

Charts: TTFT and OTPS distributions per model x speed (as CDFs), TTFT percentiles and
throughput over time, the sweep's throughput-vs-latency curve with the capacity marked,
errors and 429s over time. Tables: the summary, the sweep, the SLO verdicts.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from loadkit.aggregate import Aggregate, combine
from loadkit.results import RunSummary
from loadkit.sweep import capacity_label, capacity_line, verdict

WINDOW_S = 5  # the width of the time windows the Locust layer slices by

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
Point = tuple[float, float]
Series = tuple[str, list[Point]]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(count + 2) if first + i * step <= high]


def line_chart(
    title: str,
    series: list[Series],
    x_label: str,
    y_label: str,
    marker_x: float | None = None,
    marker_label: str = "",
    dots: bool = False,
    width: int = 640,
    height: int = 300,
) -> str:
    """An SVG line chart; empty series are left out, an empty chart says so."""
    series = [(name, points) for name, points in series if points]
    left, right, top, bottom = 64, 16, 28, 44
    inner_w, inner_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
    ]
    if not series:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>'
        )
        return "".join(parts)
    xs = [x for _, points in series for x, _ in points] + (
        [marker_x] if marker_x is not None else []
    )
    ys = [y for _, points in series for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(ys) * 1.05 or 1.0
    if x1 == x0:
        x1 = x0 + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * inner_w

    def py(y: float) -> float:
        return top + inner_h - (y - y0) / (y1 - y0) * inner_h

    parts.append(
        f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>'
    )
    for tick in _ticks(y0, y1):
        parts.append(
            f'<line x1="{left}" x2="{left + inner_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" text-anchor="end" font-size="11">{tick:,.4g}</text>'
        )
    for tick in _ticks(x0, x1):
        if tick < x0:
            continue
        parts.append(
            f'<text x="{px(tick):.1f}" y="{top + inner_h + 16}" text-anchor="middle" font-size="11">{tick:,.4g}</text>'
        )
    parts.append(
        f'<text x="{left + inner_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12">{html.escape(x_label)}</text>'
        f'<text x="14" y="{top + inner_h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {top + inner_h / 2})">{html.escape(y_label)}</text>'
    )
    if marker_x is not None:
        # the label below the legend (top left), on the side of the line with more room
        label_y = top + 30 + 16 * len(series)
        right = px(marker_x) > left + inner_w / 2
        label_x = px(marker_x) + (-4 if right else 4)
        parts.append(
            f'<line x1="{px(marker_x):.1f}" x2="{px(marker_x):.1f}" y1="{top}" y2="{top + inner_h}" '
            f'stroke="#000" stroke-dasharray="4 3"/><text x="{label_x:.1f}" y="{label_y}" '
            f'text-anchor="{"end" if right else "start"}" font-size="11">{html.escape(marker_label)}</text>'
        )
    for i, (name, points) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        if dots:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>'
                for x, y in points
            )
        parts.append(
            f'<rect x="{left + 8}" y="{top + 8 + 16 * i}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{left + 22}" y="{top + 17 + 16 * i}" font-size="11">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


QUANTILES = [i / 100 for i in range(1, 100)]


def _cdf(aggregate: Aggregate, sketch: str) -> list[Series]:
    out = []
    for (model, speed), group in sorted(aggregate.groups.items()):
        values = [group.sketches[sketch].quantile(q) for q in QUANTILES]
        points = [(v, q * 100) for v, q in zip(values, QUANTILES, strict=True) if v is not None]
        out.append((f"{model} {speed}", points))
    return out


def _over_time(aggregate: Aggregate) -> dict[str, list[Series]]:
    windows = aggregate.slices("window")
    run_s = aggregate.elapsed_s
    if len(windows) > 1 and max(windows) + WINDOW_S > run_s + min(windows):
        windows.pop(max(windows))  # the last window is cut short by the end of the run
    if not windows:
        return {}
    first = min(windows)
    width = WINDOW_S
    ttft50: list[Point] = []
    ttft99: list[Point] = []
    out_tps: list[Point] = []
    req_s: list[Point] = []
    errors: list[Point] = []
    limited: list[Point] = []
    for start, groups in windows.items():
        group = combine(groups.values())
        t = start - first
        p50, p99 = group.sketches["ttft_ms"].quantile(0.5), group.sketches["ttft_ms"].quantile(0.99)
        if p50 is not None and p99 is not None:
            ttft50.append((t, p50))
            ttft99.append((t, p99))
        out_tps.append((t, group.totals["output_tokens"] / width))
        req_s.append((t, group.totals["requests"] / width))
        failed = (
            group.totals["requests"]
            - group.outcomes.get("ok", 0)
            - group.outcomes.get("cancelled", 0)
        )
        errors.append((t, failed))
        limited.append((t, group.outcomes.get("rate_limited", 0)))
    return {
        "ttft": [("TTFT p50", ttft50), ("TTFT p99", ttft99)],
        "throughput": [("output tokens/s", out_tps)],
        "requests": [("requests/s started", req_s)],
        "errors": [("failed requests", errors), ("429s", limited)],
    }


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('-' if c is None else str(c))}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(aggregate: Aggregate, summary: RunSummary) -> str:
    sections = []
    summary_rows = [
        [
            f"{g.model} {g.speed}",
            g.requests,
            g.failures,
            g.ttft_ms.p50,
            g.ttft_ms.p99,
            g.otps.p50,
            g.e2e_ms.p99,
            g.output_tokens_per_s,
            f"{g.cost_usd:.4f}",
        ]
        for g in summary.groups
    ]
    sections.append(
        "<h2>Summary</h2>"
        + _table(
            [
                "model x speed",
                "requests",
                "failures",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "OTPS p50",
                "E2E p99 ms",
                "output tok/s",
                "cost $",
            ],
            summary_rows,
        )
    )
    sections.append(
        "<h2>Distributions</h2>"
        + line_chart(
            "TTFT distribution (CDF)", _cdf(aggregate, "ttft_ms"), "TTFT (ms)", "percentile"
        )
        + line_chart(
            "OTPS distribution (CDF)", _cdf(aggregate, "otps"), "output tokens/s", "percentile"
        )
    )
    series = _over_time(aggregate)
    if series:
        sections.append(
            "<h2>Over time</h2>"
            + line_chart("TTFT percentiles", series["ttft"], "seconds into the run", "ms")
            # separate charts: tokens/s run hundreds of times higher than requests/s
            + line_chart(
                "Output tokens/s", series["throughput"], "seconds into the run", "tokens/s"
            )
            + line_chart(
                "Requests/s started", series["requests"], "seconds into the run", "requests/s"
            )
            + line_chart(
                "Errors and 429s", series["errors"], "seconds into the run", "requests per window"
            )
        )
    sweep = summary.sweep
    if sweep is not None:
        points = [
            (row.achieved_requests_per_s, row.ttft_ms.p95)
            for row in sweep.steps
            if row.ttft_ms.p95 is not None
        ]
        capacity_row = next((r for r in sweep.steps if r.offered == sweep.capacity), None)
        marker = capacity_row.achieved_requests_per_s if capacity_row else None
        # the same conclusion as the text: "capacity >= X (no knee)" when no step broke
        sections.append(
            "<h2>Sweep</h2>"
            + line_chart(
                "Throughput vs latency",
                [("TTFT p95 per step", points)],
                "achieved requests/s",
                "TTFT p95 (ms)",
                marker_x=marker,
                marker_label=capacity_label(sweep),
                dots=True,
            )
            + _table(
                [
                    "step",
                    "offered",
                    "achieved req/s",
                    "held",
                    "output tok/s",
                    "TTFT p50",
                    "TTFT p95",
                    "TTFT p99",
                    "OTPS p50",
                    "error rate",
                    "429 rate",
                    "late starts",
                    "verdict",
                ],
                [
                    [
                        r.step,
                        r.offered,
                        r.achieved_requests_per_s,
                        None if r.held is None else f"{r.held:.0%}",
                        r.output_tokens_per_s,
                        r.ttft_ms.p50,
                        r.ttft_ms.p95,
                        r.ttft_ms.p99,
                        r.otps_p50,
                        r.error_rate,
                        r.rate_limited_rate,
                        None if r.late_start_share is None else f"{r.late_start_share:.0%}",
                        verdict(r),
                    ]
                    for r in sweep.steps
                ],
            )
            + "".join(
                f"<p>Step {r.step}: the "
                + ("load generator" if r.fell_behind == "generator" else "target")
                + f" fell behind: {html.escape(r.behind_reason or '')}</p>"
                for r in sweep.steps
                if r.fell_behind
            )
            + f"<p><b>{html.escape(capacity_line(sweep))}</b></p>"
        )
    slos = summary.slos
    if slos is not None:
        sections.append(
            "<h2>SLOs</h2>"
            + _table(
                ["SLO", "scope", "measured", "result"],
                [[r.slo, r.scope, r.value, "pass" if r.passed else "FAIL"] for r in slos.results],
            )
            + f"<p>Goodput: {slos.goodput_per_s} requests/s met every SLO.</p>"
        )
    style = (
        "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;"
        "margin:8px 0 24px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f4f4f4}svg{margin:8px 16px 8px 0;background:#fff}"
    )
    title = f"loadkit report: run {html.escape(summary.run_id)}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body><h1>{title}</h1>"
        f"<p>{summary.duration_s:.1f} s, {summary.total.requests} requests, estimated cost "
        f"${summary.total.cost_usd:.4f}.</p>" + "".join(sections) + "</body></html>\n"
    )


def write_report(aggregate: Aggregate, summary: RunSummary, path: str | Path) -> None:
    Path(path).write_text(render_report(aggregate, summary), encoding="utf-8")
