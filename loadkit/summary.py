"""The end-of-run summary: the same figures as a printed table and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loadkit.aggregate import SERVED, Aggregate, Group
from loadkit.fallback import FallbackSettings
from loadkit.fallback_checks import amplification_bound
from loadkit.results import SCHEMA_VERSION, RunMeta, RunSummary, summary_json


def _q(group: Group, sketch: str, q: float) -> float | None:
    value = group.sketches[sketch].quantile(q)
    return None if value is None else round(value, 3)


# Latencies are read at their high percentiles, speeds at their low ones (the slow tail).
LATENCY_QUANTILES = (0.5, 0.9, 0.95, 0.99)
SPEED_QUANTILES = (0.1, 0.5, 0.9)


def _percentiles(group: Group, sketch: str, quantiles: tuple[float, ...]) -> dict[str, Any]:
    return {f"p{round(q * 100)}": _q(group, sketch, q) for q in quantiles}


def _served_figures(group: Group, how: str) -> dict[str, Any]:
    return {
        "requests": group.totals[f"served_{how}"],
        "ttft_ms": _percentiles(group, f"ttft_ms_{how}", LATENCY_QUANTILES),
        "otps": _percentiles(group, f"otps_{how}", SPEED_QUANTILES),
        "e2e_ms": _percentiles(group, f"e2e_ms_{how}", LATENCY_QUANTILES),
    }


def group_figures(group: Group, elapsed_s: float) -> dict[str, Any]:
    """The figures of one model x speed (or of all of them).

    ``requests`` are the requests that ended, completed or failed: the ones Locust's own
    statistics count. A request cut by the end of the run is ``cancelled``, counted apart and
    never a failure. ``ttft_ms``, ``otps`` and ``e2e_ms`` cover every request as its user
    waited for it; ``served`` splits them by how the server served it (``usage.speed``): at
    the speed asked for, or fallen back to another.
    """
    totals = group.totals
    cancelled = group.outcomes.get("cancelled", 0)
    requests = totals["requests"] - cancelled
    ok = group.outcomes.get("ok", 0)
    prompt_tokens = (
        totals["input_tokens"]
        + totals["cache_read_input_tokens"]
        + totals["cache_creation_input_tokens"]
    )
    headroom = {
        name: int(value) if value.isdigit() else value
        for name, (value, _) in group.headroom.items()
    }
    served = {how: _served_figures(group, how) for how in SERVED}
    return {
        "requests": requests,
        "ok": ok,
        "failures": requests - ok,
        "failure_ratio": round((requests - ok) / requests, 6) if requests else 0.0,
        "cancelled": cancelled,
        "outcomes": dict(group.outcomes),
        "failures_by_type": {
            k: v for k, v in group.errors.items() if not k.startswith("cancelled")
        },
        "rate_limited": group.outcomes.get("rate_limited", 0),
        "responses_429": totals["responses_429"],
        "responses_429_by_cause": dict(sorted(group.causes_429.items())),
        "attempts": totals["attempts"],
        "fallbacks": totals["fallbacks"],
        "ttft_ms": _percentiles(group, "ttft_ms", LATENCY_QUANTILES),
        "otps": _percentiles(group, "otps", SPEED_QUANTILES),
        "e2e_ms": _percentiles(group, "e2e_ms", LATENCY_QUANTILES),
        "served": served,
        "itl_ms": {"p50": _q(group, "itl_ms", 0.5), "p99": _q(group, "itl_ms", 0.99)},
        "queue_ms": {"p50": _q(group, "queue_ms", 0.5), "p99": _q(group, "queue_ms", 0.99)},
        "schedule_ttft_ms": {
            "p50": _q(group, "schedule_ttft_ms", 0.5),
            "p99": _q(group, "schedule_ttft_ms", 0.99),
        },
        "requests_per_s": round(requests / elapsed_s, 3),
        "input_tokens": totals["input_tokens"],
        "output_tokens": totals["output_tokens"],
        "cache_read_input_tokens": totals["cache_read_input_tokens"],
        "cache_creation_input_tokens": totals["cache_creation_input_tokens"],
        "input_tokens_per_s": round(prompt_tokens / elapsed_s, 1),
        "output_tokens_per_s": round(totals["output_tokens"] / elapsed_s, 1),
        "cache_hit_ratio": round(totals["cache_read_input_tokens"] / prompt_tokens, 4)
        if prompt_tokens
        else None,
        "cost_usd": round(group.cost_usd, 6),
        "rate_limit_headroom": headroom,
        "fallback": {
            "fell_back": totals["fallbacks"],
            "fallback_rate": round(totals["fallbacks"] / requests, 4) if requests else None,
            "success_rate": round(ok / requests, 4) if requests else None,
            "attempts_per_request": round(totals["attempts"] / totals["requests"], 4)
            if totals["requests"]
            else None,
            "wait_s": round(totals["wait_ms"] / 1000, 3),
            "cache_tokens_lost": totals["cache_tokens_lost"],
            "violations": dict(group.violations),
        },
        "attempt_outcomes": dict(group.attempt_outcomes),
    }


def summary_data(
    aggregate: Aggregate,
    run_id: str,
    meta: RunMeta | None,
    fallback: FallbackSettings | None = None,
) -> dict[str, Any]:
    """The run's results as the schema's fields (``results.RunSummary``); the Locust layer
    adds its scenario's sections, then ``write_summary`` checks and writes them."""
    elapsed = aggregate.elapsed_s
    groups = [
        {"model": model, "speed": speed, **group_figures(group, elapsed)}
        for (model, speed), group in sorted(aggregate.groups.items())
    ]
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "duration_s": round(elapsed, 3),
        "groups": groups,
        "total": group_figures(aggregate.total(), elapsed),
    }
    if meta is not None:
        data["meta"] = meta.model_dump(mode="json")
    if fallback is not None:
        total = data["total"]
        data["policy"] = {
            **fallback.model_dump(),
            "amplification": total["fallback"]["attempts_per_request"],
            "amplification_bound": amplification_bound(fallback),
        }
    return data


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


COLUMNS = (
    ("model", 18),
    ("speed", 9),
    ("served", 22),
    ("reqs", 7),
    ("fail", 6),
    ("cancel", 7),
    ("429 resp", 9),
    ("429 end", 8),
    ("TTFT p50", 9),
    ("p90", 8),
    ("p99", 8),
    ("OTPS p10", 9),
    ("p50", 7),
    ("p90", 7),
    ("E2E p50", 9),
    ("p99", 9),
    ("out tok/s", 11),
    ("cache hit", 11),
    ("cost $", 10),
)
TEXT_COLUMNS = 3  # left-aligned


def served_label(speed: str, how: str) -> str:
    if how == "as_asked":
        return "as asked"
    return "fell back" if not speed else f"fell back ({'standard' if speed == 'fast' else 'fast'})"


def table_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows every view shows: per model x speed, then all; a row with requests that fell
    back is split into one row per way of serving (its counts on the first)."""
    rows: list[dict[str, Any]] = []
    for group in [*data["groups"], {"model": "all", "speed": "", **data["total"]}]:
        split = group["served"]["fell_back"]["requests"] > 0
        for how in SERVED if split else ("as_asked",):
            timing = group["served"][how] if split else group
            rows.append(
                {
                    "model": group["model"],
                    "speed": group["speed"],
                    "served": served_label(group["speed"], how) if split else "",
                    "requests": timing["requests"],
                    "failures": group["failures"] if how == "as_asked" else None,
                    "cancelled": group["cancelled"] if how == "as_asked" else None,
                    "responses_429": group["responses_429"] if how == "as_asked" else None,
                    "rate_limited": group["rate_limited"] if how == "as_asked" else None,
                    "ttft_ms": timing["ttft_ms"],
                    "otps": timing["otps"],
                    "e2e_ms": timing["e2e_ms"],
                    "output_tokens_per_s": group["output_tokens_per_s"]
                    if how == "as_asked"
                    else None,
                    "cache_hit_ratio": group["cache_hit_ratio"] if how == "as_asked" else None,
                    "cost_usd": group["cost_usd"] if how == "as_asked" else None,
                    "failures_by_type": group["failures_by_type"] if how == "as_asked" else {},
                }
            )
    return rows


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _cells(row: dict[str, Any]) -> list[str]:
    hit = row["cache_hit_ratio"]
    cost = row["cost_usd"]
    return [
        row["model"],
        row["speed"],
        row["served"],
        _count(row["requests"]),
        _count(row["failures"]),
        _count(row["cancelled"]),
        _count(row["responses_429"]),
        _count(row["rate_limited"]),
        _fmt(row["ttft_ms"]["p50"]),
        _fmt(row["ttft_ms"]["p90"]),
        _fmt(row["ttft_ms"]["p99"]),
        _fmt(row["otps"]["p10"], 1),
        _fmt(row["otps"]["p50"], 1),
        _fmt(row["otps"]["p90"], 1),
        _fmt(row["e2e_ms"]["p50"]),
        _fmt(row["e2e_ms"]["p99"]),
        "" if row["output_tokens_per_s"] is None else _fmt(row["output_tokens_per_s"], 1),
        "" if row["requests"] is None or row["failures"] is None else
        ("-" if hit is None else f"{hit:.1%}"),
        "" if cost is None else f"{cost:.4f}",
    ]  # fmt: skip


def _line(cells: list[str]) -> str:
    return "".join(
        cell.ljust(width) if i < TEXT_COLUMNS else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    ).rstrip()


def format_table(data: dict[str, Any]) -> str:
    total = data["total"]
    lines = [
        f"loadkit summary - run {data['run_id']}, {data['duration_s']:.1f} s: "
        f"{total['requests']} requests ended ({total['ok']} ok, {total['failures']} failed), "
        f"{total['cancelled']} cancelled by the end of the run",
        "(reqs: requests that ended; cancel: cut by the run's end, not failures; 429 resp: "
        "answers with status 429, retried or not; 429 end: requests that ended rate-limited; "
        "TTFT and E2E in ms, OTPS in output tokens/s per request)",
        _line([name for name, _ in COLUMNS]),
    ]
    lines.extend(_line(_cells(row)) for row in table_rows(data))
    failures = total["failures_by_type"]
    if failures:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in sorted(failures.items())))
    causes = total.get("responses_429_by_cause")
    if causes:
        lines.append(
            "429 answers by limit (attempt speed/limit): "
            + ", ".join(f"{k} x{v}" for k, v in causes.items())
        )
    if "policy" in data and data["policy"]["policy"] != "none":
        lines.extend(format_fallback(data))
    return "\n".join(lines)


def format_fallback(data: dict[str, Any]) -> list[str]:
    policy = data["policy"]
    lines = [
        f"fallback policy {policy['policy']}: {policy['amplification']} attempts per request "
        f"(bound {policy['amplification_bound']})",
        "model             speed     success  fell back   waits s  cache lost",
    ]
    for group in [*data["groups"], {"model": "all", "speed": "", **data["total"]}]:
        fb = group["fallback"]
        lines.append(
            f"{group['model']:<18}{group['speed']:<8}"
            f"{(fb['success_rate'] or 0):>9.1%}{(fb['fallback_rate'] or 0):>11.1%}"
            f"{fb['wait_s']:>10.1f}{fb['cache_tokens_lost']:>12,}"
        )
    violations = data["total"]["fallback"]["violations"]
    if violations:
        lines.append("policy violations: " + ", ".join(f"{k} x{v}" for k, v in violations.items()))
    return lines


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan) replaced by None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def write_summary(data: dict[str, Any], path: str | Path) -> str:
    """Write the run's results as a ``RunSummary``; returns the problem if they did not fit
    the schema (a defect: they are then written as they are, so that nothing is lost)."""
    clean = finite(data)
    try:
        text = summary_json(RunSummary.model_validate(clean))
        problem = ""
    except ValidationError as err:
        text = json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n"
        problem = f"the results do not fit schema version {SCHEMA_VERSION}: {err}"
    Path(path).write_text(text, encoding="utf-8")
    return problem
