"""The live charts of the web UI's LLM view: per model x speed, per time window.

The windows are the aggregate's ``("window", start_s)`` slices: keyed by each request's
intended start and merged on the master from the workers' sketches, so a window's
percentiles come from its merged sketch, never from averaged percentiles.

A window keyed by intended start keeps filling until its slowest request has ended and been
reported. While the run goes on, a window is shown only once it has settled: its end lies
further back than a worker report interval plus the run's p99 queue delay and end-to-end
time so far (at most ``MAX_SETTLE_S``). Once the run has ended, every window is shown except
one cut short by the end. A half-filled last window is never drawn as a dip.
"""

from __future__ import annotations

import re
import time
from typing import Any

from loadkit.aggregate import Aggregate, Group
from loadkit.locust_plugin.capacity import WINDOW_S
from loadkit.locust_plugin.run import Run
from loadkit.slo import SLO

MAX_WINDOWS = 180  # the last 15 minutes of 5 s windows
MAX_SETTLE_S = 60.0
REPORT_INTERVAL_S = 3.0  # Locust's WORKER_REPORT_INTERVAL
REQUESTS_REMAINING = ("anthropic-ratelimit-requests-remaining",)
# The tokens left: for fast mode, the least of its own input and output limits'; else the
# standard limits' ``tokens-*`` (input and output together), or failing that the least of
# input and output.
FAST_TOKENS = (
    "anthropic-fast-input-tokens-remaining",
    "anthropic-fast-output-tokens-remaining",
)
STANDARD_TOKENS = ("anthropic-ratelimit-tokens-remaining",)
STANDARD_TOKENS_APART = (
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
)
# SLO metrics drawn as threshold lines, and the chart each is drawn on.
_SLO_CHART = (
    (re.compile(r"ttft_p(50|95|99)_ms$"), "ttft"),
    (re.compile(r"otps_p50$"), "otps"),
)


def _quantile(group: Group | None, sketch: str, q: float) -> float | None:
    if group is None:
        return None
    value = group.sketches[sketch].quantile(q)
    return None if value is None else round(value, 1)


def _rate(group: Group | None, total: str) -> float:
    return 0.0 if group is None else round(group.totals[total] / WINDOW_S, 2)


def _headroom(group: Group | None, names: tuple[str, ...]) -> float | None:
    """The least left of the first headers in ``names`` that the window's responses had."""
    if group is None:
        return None
    values = []
    for name in names:
        found = group.headroom.get(name)
        if found is not None and found[0].replace(".", "", 1).isdigit():
            values.append(float(found[0]))
    return min(values) if values else None


def _tokens_left(group: Group | None, speed: str) -> float | None:
    tries = (FAST_TOKENS,) if speed == "fast" else ()
    for names in (*tries, STANDARD_TOKENS, STANDARD_TOKENS_APART):
        left = _headroom(group, names)
        if left is not None:
            return left
    return None


def settle_s(aggregate: Aggregate, distributed: bool) -> float:
    """How long after its end a window is taken as complete (see the module's doc)."""
    total = aggregate.total()
    e2e = total.sketches["e2e_ms"].quantile(0.99) or 0.0
    queue = total.sketches["queue_ms"].quantile(0.99) or 0.0
    late = min(MAX_SETTLE_S, (e2e + queue) / 1000)
    return (REPORT_INTERVAL_S if distributed else 0.0) + late


def horizon_s(aggregate: Aggregate, run_start: float, settle: float, now: float) -> float:
    """The end (seconds into the run) up to which windows are shown."""
    if aggregate.ended_at is not None:
        return aggregate.ended_at - run_start
    return now - run_start - settle


def slo_lines(slos: list[SLO]) -> list[dict[str, Any]]:
    out = []
    for slo in slos:
        for pattern, chart in _SLO_CHART:
            if pattern.match(slo.metric):
                out.append(
                    {
                        "chart": chart,
                        "metric": slo.metric,
                        "label": f"SLO {slo.metric} {slo.op} {slo.threshold:g}"
                        + ("" if slo.scope == "all" else f" ({slo.scope})"),
                        "threshold": slo.threshold,
                        "group": None if slo.scope == "all" else [slo.model, slo.speed],
                    }
                )
    return out


def series(run: Run, now: float | None = None) -> dict[str, Any]:
    """Every settled window's figures per model x speed, for the charts (strict JSON)."""
    now = time.time() if now is None else now
    aggregate = run.aggregate
    settings = run.capacity
    run_start = settings.run_start_wall if settings is not None else aggregate.started_at
    settle = settle_s(aggregate, distributed=run.role.collects)
    horizon = horizon_s(aggregate, run_start, settle, now)
    windows = {
        start: groups
        for start, groups in aggregate.slices("window").items()
        if start + WINDOW_S <= horizon
    }
    starts = sorted(windows)[-MAX_WINDOWS:]
    keys = sorted({key for start in starts for key in windows[start]})
    open_loop = settings is not None and settings.rate_per_user > 0
    groups = []
    for model, speed in keys:
        cells = [windows[start].get((model, speed)) for start in starts]
        figures: dict[str, list[float | None]] = {
            "ttft_p50": [_quantile(g, "ttft_ms", 0.5) for g in cells],
            "ttft_p95": [_quantile(g, "ttft_ms", 0.95) for g in cells],
            "ttft_p99": [_quantile(g, "ttft_ms", 0.99) for g in cells],
            "otps_p50": [_quantile(g, "otps", 0.5) for g in cells],
            "output_tps": [_rate(g, "output_tokens") for g in cells],
            "responses_429_per_s": [_rate(g, "responses_429") for g in cells],
            "fallbacks_per_s": [_rate(g, "fallbacks") for g in cells],
            "requests_remaining": [_headroom(g, REQUESTS_REMAINING) for g in cells],
            "tokens_remaining": [_tokens_left(g, speed) for g in cells],
        }
        if open_loop:
            figures["lateness_p50"] = [_quantile(g, "queue_ms", 0.5) for g in cells]
            figures["lateness_p99"] = [_quantile(g, "queue_ms", 0.99) for g in cells]
        groups.append({"model": model, "speed": speed, "figures": figures})
    return {
        "window_s": WINDOW_S,
        "settle_s": round(settle, 1),
        "ended": aggregate.ended_at is not None,
        "open_loop": open_loop,
        "t": starts,
        "groups": groups,
        "slos": slo_lines(settings.slos if settings is not None else []),
    }
