"""The end-of-run summary: the same figures as a printed table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadkit.aggregate import Aggregate, Group
from loadkit.fallback import FallbackSettings
from loadkit.fallback_checks import amplification_bound


def _q(group: Group, sketch: str, q: float) -> float | None:
    value = group.sketches[sketch].quantile(q)
    return None if value is None else round(value, 3)


def group_figures(group: Group, elapsed_s: float) -> dict[str, Any]:
    totals = group.totals
    requests = totals["requests"]
    ok = group.outcomes.get("ok", 0)
    finished = requests - group.outcomes.get("cancelled", 0)  # cut by the end of the run
    prompt_tokens = (
        totals["input_tokens"]
        + totals["cache_read_input_tokens"]
        + totals["cache_creation_input_tokens"]
    )
    headroom = {
        name: int(value) if value.isdigit() else value
        for name, (value, _) in group.headroom.items()
    }
    return {
        "requests": requests,
        "ok": ok,
        "failures": requests - ok,
        "outcomes": dict(group.outcomes),
        "failures_by_type": dict(group.errors),
        "rate_limited": group.outcomes.get("rate_limited", 0),
        "attempts": totals["attempts"],
        "fallbacks": totals["fallbacks"],
        "ttft_ms": {
            "p50": _q(group, "ttft_ms", 0.5),
            "p90": _q(group, "ttft_ms", 0.9),
            "p99": _q(group, "ttft_ms", 0.99),
        },
        "otps": {
            "p10": _q(group, "otps", 0.1),
            "p50": _q(group, "otps", 0.5),
            "p90": _q(group, "otps", 0.9),
        },
        "e2e_ms": {"p50": _q(group, "e2e_ms", 0.5), "p99": _q(group, "e2e_ms", 0.99)},
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
            "success_rate": round(ok / finished, 4) if finished else None,
            "attempts_per_request": round(totals["attempts"] / requests, 4) if requests else None,
            "ttft_ms_as_asked": {
                "p50": _q(group, "ttft_ms_as_asked", 0.5),
                "p99": _q(group, "ttft_ms_as_asked", 0.99),
            },
            "ttft_ms_fell_back": {
                "p50": _q(group, "ttft_ms_fell_back", 0.5),
                "p99": _q(group, "ttft_ms_fell_back", 0.99),
            },
            "e2e_ms_as_asked": {
                "p50": _q(group, "e2e_ms_as_asked", 0.5),
                "p99": _q(group, "e2e_ms_as_asked", 0.99),
            },
            "e2e_ms_fell_back": {
                "p50": _q(group, "e2e_ms_fell_back", 0.5),
                "p99": _q(group, "e2e_ms_fell_back", 0.99),
            },
            "wait_s": round(totals["wait_ms"] / 1000, 3),
            "cache_tokens_lost": totals["cache_tokens_lost"],
            "violations": dict(group.violations),
        },
        "attempt_outcomes": dict(group.attempt_outcomes),
    }


def summary_data(
    aggregate: Aggregate, run_id: str, fallback: FallbackSettings | None = None
) -> dict[str, Any]:
    elapsed = aggregate.elapsed_s
    groups = [
        {"model": model, "speed": speed, **group_figures(group, elapsed)}
        for (model, speed), group in sorted(aggregate.groups.items())
    ]
    data: dict[str, Any] = {
        "run_id": run_id,
        "duration_s": round(elapsed, 3),
        "groups": groups,
        "total": group_figures(aggregate.total(), elapsed),
    }
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
    ("speed", 8),
    ("reqs", 6),
    ("fail", 5),
    ("429", 5),
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


def _row(model: str, speed: str, f: dict[str, Any]) -> list[str]:
    hit = f["cache_hit_ratio"]
    return [
        model,
        speed,
        str(f["requests"]),
        str(f["failures"]),
        str(f["rate_limited"]),
        _fmt(f["ttft_ms"]["p50"]),
        _fmt(f["ttft_ms"]["p90"]),
        _fmt(f["ttft_ms"]["p99"]),
        _fmt(f["otps"]["p10"], 1),
        _fmt(f["otps"]["p50"], 1),
        _fmt(f["otps"]["p90"], 1),
        _fmt(f["e2e_ms"]["p50"]),
        _fmt(f["e2e_ms"]["p99"]),
        _fmt(f["output_tokens_per_s"], 1),
        "-" if hit is None else f"{hit:.1%}",
        f"{f['cost_usd']:.4f}",
    ]


def format_table(data: dict[str, Any]) -> str:
    lines = [
        f"loadkit summary - run {data['run_id']}, {data['duration_s']:.1f} s "
        "(TTFT and E2E in ms, OTPS in output tokens/s per request)"
    ]
    header = "".join(
        name.rjust(width) if i > 1 else name.ljust(width) for i, (name, width) in enumerate(COLUMNS)
    )
    lines.append(header)
    rows = [_row(g["model"], g["speed"], g) for g in data["groups"]]
    rows.append(_row("all", "", data["total"]))
    for row in rows:
        lines.append(
            "".join(
                cell.rjust(width) if i > 1 else cell.ljust(width)
                for i, (cell, (_, width)) in enumerate(zip(row, COLUMNS, strict=True))
            )
        )
    failures = data["total"]["failures_by_type"]
    if failures:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in sorted(failures.items())))
    if "policy" in data and data["policy"]["policy"] != "none":
        lines.extend(format_fallback(data))
    return "\n".join(lines)


def format_fallback(data: dict[str, Any]) -> list[str]:
    policy = data["policy"]
    lines = [
        f"fallback policy {policy['policy']}: {policy['amplification']} attempts per request "
        f"(bound {policy['amplification_bound']})",
        "model             speed     success  fell back  TTFT p50/p99 as asked  "
        "fell back   E2E p50/p99 as asked   fell back   waits s  cache lost",
    ]

    def pair(figures: dict[str, Any]) -> str:
        return f"{_fmt(figures['p50'])}/{_fmt(figures['p99'])}"

    for group in [*data["groups"], {"model": "all", "speed": "", **data["total"]}]:
        fb = group["fallback"]
        lines.append(
            f"{group['model']:<18}{group['speed']:<8}"
            f"{(fb['success_rate'] or 0):>9.1%}{(fb['fallback_rate'] or 0):>11.1%}"
            f"{pair(fb['ttft_ms_as_asked']):>23}{pair(fb['ttft_ms_fell_back']):>12}"
            f"{pair(fb['e2e_ms_as_asked']):>23}{pair(fb['e2e_ms_fell_back']):>12}"
            f"{fb['wait_s']:>10.1f}{fb['cache_tokens_lost']:>12,}"
        )
    violations = data["total"]["fallback"]["violations"]
    if violations:
        lines.append("policy violations: " + ", ".join(f"{k} x{v}" for k, v in violations.items()))
    return lines


def write_json(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
