"""The end-of-run summary: the same figures as a printed table and as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from loadkit.adherence import adherence_figures, adherence_lines
from loadkit.agentic_summary import by_turn, content_figures, content_lines
from loadkit.aggregate import SERVED, Aggregate, Group, combine
from loadkit.dataset_table import dataset_lines
from loadkit.fallback import FallbackSettings
from loadkit.fallback_checks import amplification_bound
from loadkit.results import (
    SCHEMA_VERSION,
    DatasetGroup,
    GroupFigures,
    ModelGroup,
    PolicySection,
    RunMeta,
    RunSummary,
    ServedFigures,
    finite,
    summary_json,
)


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
    adherence = adherence_figures(group)
    return {
        **({"output_target": adherence} if adherence is not None else {}),
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
        **({"content": content} if (content := content_figures(group)) else {}),
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


def figures(aggregate: Aggregate) -> tuple[list[ModelGroup], GroupFigures]:
    """Every model x speed's figures, and all of them together, as the schema types them."""
    elapsed = aggregate.elapsed_s
    groups = [
        ModelGroup.model_validate(
            finite({"model": model, "speed": speed, **group_figures(group, elapsed)})
        )
        for (model, speed), group in sorted(aggregate.groups.items())
    ]
    return groups, GroupFigures.model_validate(finite(group_figures(aggregate.total(), elapsed)))


def dataset_figures(aggregate: Aggregate, names: Sequence[str]) -> list[DatasetGroup]:
    """Each dataset's figures over every model x speed (the "dataset" slices), in workload
    order; a dataset no request drew from is left out."""
    elapsed = aggregate.elapsed_s
    return [
        DatasetGroup.model_validate(
            finite(
                {
                    "dataset": names[index] if index < len(names) else str(index),
                    "index": index,
                    **group_figures(combine(groups.values()), elapsed),
                }
            )
        )
        for index, groups in aggregate.slices("dataset").items()
    ]


def build_summary(
    aggregate: Aggregate,
    run_id: str,
    meta: RunMeta,
    fallback: FallbackSettings | None = None,
    datasets: Sequence[str] = (),
) -> RunSummary:
    """The run's results, built once from its aggregate; the Locust layer adds its
    scenario's sections (``RunSummary.model_copy(update=...)``) and every output reads it.
    ``datasets``: the workload's dataset names (``by_dataset`` when requests drew from them)."""
    groups, total = figures(aggregate)
    summary = RunSummary(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        duration_s=round(aggregate.elapsed_s, 3),
        meta=meta,
        groups=groups,
        total=total,
    )
    by_dataset = dataset_figures(aggregate, datasets)
    if by_dataset:
        summary = summary.model_copy(update={"by_dataset": by_dataset})
    turns = by_turn(aggregate)
    if turns is not None:
        summary = summary.model_copy(update={"by_turn": turns})
    if fallback is None:
        return summary
    policy = PolicySection(
        **fallback.model_dump(),
        amplification=total.fallback.attempts_per_request,
        amplification_bound=amplification_bound(fallback),
    )
    return summary.model_copy(update={"policy": policy})


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
    ("p50", 9),
    ("p90", 9),
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


def _labelled(groups: Sequence[ModelGroup], total: GroupFigures) -> list[ModelGroup]:
    return [*groups, ModelGroup(model="all", speed="", **dict(total))]


def table_rows(groups: Sequence[ModelGroup], total: GroupFigures) -> list[dict[str, Any]]:
    """The rows every view shows: per model x speed, then all; a row with requests that fell
    back is split into one row per way of serving (its counts on the first)."""
    rows: list[dict[str, Any]] = []
    for group in _labelled(groups, total):
        split = group.served["fell_back"].requests > 0
        hows: tuple[Literal["as_asked", "fell_back"], ...] = SERVED if split else ("as_asked",)
        for how in hows:
            timing: ServedFigures | GroupFigures = group.served[how] if split else group
            first = how == "as_asked"
            rows.append(
                {
                    "model": group.model,
                    "speed": group.speed,
                    "served": served_label(group.speed, how) if split else "",
                    "requests": timing.requests,
                    "failures": group.failures if first else None,
                    "cancelled": group.cancelled if first else None,
                    "responses_429": group.responses_429 if first else None,
                    "rate_limited": group.rate_limited if first else None,
                    "ttft_ms": timing.ttft_ms.model_dump(),
                    "otps": timing.otps.model_dump(),
                    "e2e_ms": timing.e2e_ms.model_dump(),
                    "output_tokens_per_s": group.output_tokens_per_s if first else None,
                    "cache_hit_ratio": group.cache_hit_ratio if first else None,
                    "cost_usd": group.cost_usd if first else None,
                    "failures_by_type": group.failures_by_type if first else {},
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
    """The cells in their columns; a cell wider than its column still gets a space from its
    neighbours (a 4-digit OTPS once ran into the next one)."""
    parts = []
    for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True)):
        if i < TEXT_COLUMNS:
            parts.append(cell.ljust(width) if len(cell) < width else cell + " ")
        else:
            parts.append(cell.rjust(width) if len(cell) < width else " " + cell)
    return "".join(parts).rstrip()


def format_table(summary: RunSummary) -> str:
    total = summary.total
    lines = [
        f"loadkit summary - run {summary.run_id}, {summary.duration_s:.1f} s: "
        f"{total.requests} requests ended ({total.ok} ok, {total.failures} failed), "
        f"{total.cancelled} cancelled by the end of the run",
        "(reqs: requests that ended; cancel: cut by the run's end, not failures; 429 resp: "
        "answers with status 429, retried or not; 429 end: requests that ended rate-limited; "
        "TTFT and E2E in ms, OTPS in output tokens/s per request)",
        _line([name for name, _ in COLUMNS]),
    ]
    lines.extend(_line(_cells(row)) for row in table_rows(summary.groups, total))
    failures = total.failures_by_type
    if failures:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in sorted(failures.items())))
    causes = total.responses_429_by_cause
    if causes:
        lines.append(
            "429 answers by limit (attempt speed/limit): "
            + ", ".join(f"{k} x{v}" for k, v in causes.items())
        )
    if summary.policy is not None and summary.policy.policy != "none":
        lines.extend(format_fallback(summary, summary.policy))
    lines.extend(content_lines(summary))
    lines.extend(dataset_lines(summary))
    lines.extend(adherence_lines(summary))
    return "\n".join(lines)


def format_fallback(summary: RunSummary, policy: PolicySection) -> list[str]:
    lines = [
        f"fallback policy {policy.policy}: {policy.amplification} attempts per request "
        f"(bound {policy.amplification_bound})",
        "model             speed     success  fell back   waits s  cache lost",
    ]
    for group in _labelled(summary.groups, summary.total):
        fb = group.fallback
        lines.append(
            f"{group.model:<18}{group.speed:<8}"
            f"{(fb.success_rate or 0):>9.1%}{(fb.fallback_rate or 0):>11.1%}"
            f"{fb.wait_s:>10.1f}{fb.cache_tokens_lost:>12,}"
        )
    violations = summary.total.fallback.violations
    if violations:
        lines.append("policy violations: " + ", ".join(f"{k} x{v}" for k, v in violations.items()))
    return lines


def write_summary(summary: RunSummary, path: str | Path) -> None:
    Path(path).write_text(summary_json(summary), encoding="utf-8")


def unfitting_figures(aggregate: Aggregate, run_id: str) -> dict[str, Any]:
    """The figures as computed, unchecked: what ``write_unfitting`` writes."""
    elapsed = aggregate.elapsed_s
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "duration_s": round(elapsed, 3),
        "groups": [
            {"model": model, "speed": speed, **group_figures(group, elapsed)}
            for (model, speed), group in sorted(aggregate.groups.items())
        ],
        "total": group_figures(aggregate.total(), elapsed),
    }


def write_unfitting(data: dict[str, Any], path: str | Path) -> None:
    """Results that could not be built as the schema types them (a defect) are still
    written, as they are, in strict JSON: nothing is lost."""
    text = json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    Path(path).write_text(text, encoding="utf-8")
