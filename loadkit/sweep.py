"""Load sweeps for capacity planning: the steps, their figures, and the capacity they show.

A sweep steps the number of users (closed loop) or the arrival rate (open loop) from
``start`` by ``step`` every ``step_duration_s`` up to ``stop``. Requests belong to the step
in which they were meant to start. The capacity is the highest step that met every SLO,
overall and per model x speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from loadkit.aggregate import Aggregate, Group, combine
from loadkit.slo import SLO, metric_value

SweepKind = Literal["users", "rate"]


@dataclass(frozen=True)
class SweepPlan:
    kind: SweepKind
    start: float
    step: float
    step_duration_s: float
    stop: float

    def __post_init__(self) -> None:
        if self.start <= 0 or self.step <= 0 or self.step_duration_s <= 0:
            raise ValueError("sweep: start, step and step duration must be positive")
        if self.stop < self.start:
            raise ValueError(f"sweep: stop ({self.stop:g}) is below start ({self.start:g})")

    @property
    def steps(self) -> int:
        return math.floor((self.stop - self.start) / self.step + 1e-9) + 1

    def load(self, index: int) -> float:
        return self.start + self.step * index

    def step_at(self, elapsed_s: float) -> int | None:
        """The step running ``elapsed_s`` after the sweep began; None once it is over."""
        index = int(elapsed_s // self.step_duration_s)
        return index if index < self.steps else None

    @property
    def duration_s(self) -> float:
        return self.steps * self.step_duration_s


def _scoped(groups: dict[tuple[str, str], Group], slo: SLO) -> Group:
    return combine(
        g
        for (model, speed), g in groups.items()
        if (slo.model is None or model == slo.model) and (slo.speed is None or speed == slo.speed)
    )


def step_row(
    plan: SweepPlan, index: int, groups: dict[tuple[str, str], Group], slos: list[SLO]
) -> dict[str, Any]:
    group = combine(groups.values())
    duration = plan.step_duration_s
    verdicts = []
    for slo in slos:
        value = metric_value(_scoped(groups, slo), slo.metric, duration)
        verdicts.append(
            {
                "slo": slo.text,
                "metric": slo.metric,
                "op": slo.op,
                "threshold": slo.threshold,
                "value": value,
                "passed": value is not None and slo.holds(value),
            }
        )

    def q(name: str, quantile: float) -> float | None:
        value = group.sketches[name].quantile(quantile)
        return None if value is None else round(value, 2)

    return {
        "step": index,
        "offered": plan.load(index),
        "requests": group.totals["requests"],
        "achieved_requests_per_s": round(group.outcomes.get("ok", 0) / duration, 3),
        "output_tokens_per_s": round(group.totals["output_tokens"] / duration, 1),
        "ttft_ms": {"p50": q("ttft_ms", 0.5), "p95": q("ttft_ms", 0.95), "p99": q("ttft_ms", 0.99)},
        "schedule_ttft_ms_p95": q("schedule_ttft_ms", 0.95),
        "otps_p50": q("otps", 0.5),
        "error_rate": metric_value(group, "error_rate", duration),
        "rate_limited_rate": metric_value(group, "rate_limited_rate", duration),
        "slos": verdicts,
        "met_slos": all(v["passed"] for v in verdicts),
    }


def analyse(
    plan: SweepPlan, aggregate: Aggregate, slos: list[SLO], completed: int
) -> dict[str, Any]:
    """The table of the ``completed`` first steps, and the capacity overall and per group."""
    steps = aggregate.slices("step")
    rows = [step_row(plan, i, steps[i], slos) for i in range(completed) if i in steps]
    passing = [r["offered"] for r in rows if r["met_slos"]]
    per_group: dict[str, float | None] = {}
    names = sorted({key for groups in steps.values() for key in groups})
    for model, speed in names:
        best = None
        for index in range(completed):
            groups = {k: g for k, g in steps.get(index, {}).items() if k == (model, speed)}
            if not groups:
                continue
            scoped = [s for s in slos if s.model in (None, model) and s.speed in (None, speed)]
            if step_row(plan, index, groups, scoped)["met_slos"]:
                best = plan.load(index)
        per_group[f"{model} {speed}"] = best
    return {
        "kind": plan.kind,
        "plan": {"start": plan.start, "step": plan.step, "step_duration_s": plan.step_duration_s,
                 "stop": plan.stop},
        "steps": rows,
        "capacity": max(passing) if passing else None,
        "capacity_by_group": per_group,
    }  # fmt: skip


def clearly_broken(row: dict[str, Any]) -> bool:
    """A step that broke an SLO by a wide margin: any error-rate bound, or a latency bound
    by 2x (an OTPS floor by half)."""
    for verdict in row["slos"]:
        value, threshold = verdict["value"], verdict["threshold"]
        if verdict["passed"] or value is None:
            continue
        if verdict["metric"].endswith("_rate"):
            return True
        if verdict["op"].startswith("<") and value >= 2 * threshold:
            return True
        if verdict["op"].startswith(">") and value <= threshold / 2:
            return True
    return False


def format_sweep(result: dict[str, Any]) -> str:
    unit = "users" if result["kind"] == "users" else "req/s offered"
    lines = [
        f"sweep ({unit}): step, offered, achieved req/s, output tok/s, TTFT p50/p95/p99 ms, "
        "OTPS p50, errors, 429s, SLOs"
    ]
    for row in result["steps"]:
        ttft = row["ttft_ms"]

        def fmt(v: float | None, digits: int = 0) -> str:
            return "-" if v is None else f"{v:,.{digits}f}"

        lines.append(
            f"  {row['step']:>3} {row['offered']:>9g} {row['achieved_requests_per_s']:>9.2f} "
            f"{row['output_tokens_per_s']:>10.1f} {fmt(ttft['p50']):>7}/{fmt(ttft['p95'])}/"
            f"{fmt(ttft['p99'])} {fmt(row['otps_p50'], 1):>8} "
            f"{(row['error_rate'] or 0):>7.1%} {(row['rate_limited_rate'] or 0):>6.1%} "
            f"{'met' if row['met_slos'] else 'BROKEN'}"
        )
    capacity = result["capacity"]
    lines.append(
        f"capacity: {capacity:g} {unit}"
        if capacity is not None
        else "capacity: no step met every SLO"
    )
    for name, value in result["capacity_by_group"].items():
        lines.append(f"  {name}: {'-' if value is None else f'{value:g}'}")
    return "\n".join(lines)
