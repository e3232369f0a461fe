"""``loadkit compare BASE.json NEW.json``: two runs side by side, and regression gates.

A gate (``--fail-if``) names a metric, a direction and a change that fails the comparison:
``ttft_p95_ms>+10%`` fails when the new run's TTFT p95 is more than 10% above the base's,
``otps_p50<-5%`` when its OTPS p50 is more than 5% below, ``error_rate>+0.01`` (no ``%``)
when the error rate rose by more than 0.01. ``model=M,speed=S:`` in front scopes a gate to
one model x speed; without it the gate reads the run's totals (``all``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from loadkit.results import GroupFigures, RunSummary


class CompareError(ValueError):
    """A gate expression that cannot be understood; the message says what is wrong."""


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    read: Callable[[GroupFigures], float | None]
    digits: int


def _per_request(total: float, group: GroupFigures) -> float | None:
    return total / group.requests if group.requests else None


METRICS: tuple[Metric, ...] = (
    Metric("ttft_p50_ms", "TTFT p50 ms", lambda g: g.ttft_ms.p50, 1),
    Metric("ttft_p90_ms", "TTFT p90 ms", lambda g: g.ttft_ms.p90, 1),
    Metric("ttft_p95_ms", "TTFT p95 ms", lambda g: g.ttft_ms.p95, 1),
    Metric("ttft_p99_ms", "TTFT p99 ms", lambda g: g.ttft_ms.p99, 1),
    Metric("otps_p10", "OTPS p10", lambda g: g.otps.p10, 1),
    Metric("otps_p50", "OTPS p50", lambda g: g.otps.p50, 1),
    Metric("e2e_p50_ms", "E2E p50 ms", lambda g: g.e2e_ms.p50, 1),
    Metric("e2e_p95_ms", "E2E p95 ms", lambda g: g.e2e_ms.p95, 1),
    Metric("e2e_p99_ms", "E2E p99 ms", lambda g: g.e2e_ms.p99, 1),
    Metric("error_rate", "error rate", lambda g: g.failure_ratio, 4),
    Metric(
        "rate_429",
        "429s per attempt",
        lambda g: g.responses_429 / g.attempts if g.attempts else None,
        4,
    ),
    Metric("requests_per_s", "requests/s", lambda g: g.requests_per_s, 2),
    Metric("output_tokens_per_s", "output tok/s", lambda g: g.output_tokens_per_s, 1),
    Metric("cost_per_request_usd", "cost $/request", lambda g: _per_request(g.cost_usd, g), 6),
)
BY_NAME = {metric.name: metric for metric in METRICS}

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_GATE = re.compile(
    r"^\s*(?:(?P<scope>[^:]+):)?\s*(?P<metric>[a-z_0-9]+)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<value>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<percent>%?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    text: str
    metric: Metric
    op: str
    limit: float  # a fraction when relative (10% -> 0.10), else in the metric's unit
    relative: bool
    model: str = "all"
    speed: str = ""

    @property
    def group_name(self) -> str:
        return f"{self.model} {self.speed}".strip()


def parse_gate(text: str) -> Gate:
    found = _GATE.match(text)
    if found is None:
        raise CompareError(
            f"--fail-if {text!r}: expected [model=M,speed=S:]METRIC>+N% (or <-N%, or an "
            "absolute change without %), e.g. ttft_p95_ms>+10%"
        )
    metric = BY_NAME.get(found.group("metric"))
    if metric is None:
        raise CompareError(
            f"--fail-if {text!r}: unknown metric {found.group('metric')!r} "
            f"(use {', '.join(BY_NAME)})"
        )
    value = float(found.group("value"))
    relative = bool(found.group("percent"))
    model, speed = "all", ""
    scope = found.group("scope")
    if scope:
        parts = dict(part.strip().partition("=")[::2] for part in scope.split(","))
        unknown = set(parts) - {"model", "speed"}
        if unknown or not parts.get("model"):
            raise CompareError(f"--fail-if {text!r}: the scope is model=NAME[,speed=standard|fast]")
        model, speed = parts["model"], parts.get("speed", "standard")
    return Gate(
        text.strip(),
        metric,
        found.group("op"),
        value / 100 if relative else value,
        relative,
        model,
        speed,
    )


def change(base: float | None, new: float | None, relative: bool) -> float | None:
    """new - base, as a fraction of base when ``relative`` (0 -> 0 is no change)."""
    if base is None or new is None:
        return None
    if not relative:
        return new - base
    if base == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - base) / abs(base)


def _groups(summary: RunSummary) -> dict[str, GroupFigures]:
    found: dict[str, GroupFigures] = {f"{g.model} {g.speed}": g for g in summary.groups}
    found["all"] = summary.total
    return found


@dataclass(frozen=True)
class Verdict:
    gate: Gate
    change: float | None
    failed: bool
    reason: str


def judge(gate: Gate, base: RunSummary, new: RunSummary) -> Verdict:
    """A gate fails when its change crosses the limit, or when it cannot be judged: a gate
    that cannot see the metric must not let a regression through."""
    before, after = _groups(base).get(gate.group_name), _groups(new).get(gate.group_name)
    if before is None or after is None:
        which = "base" if before is None else "new"
        return Verdict(gate, None, True, f"the {which} run has no {gate.group_name!r} requests")
    found = change(gate.metric.read(before), gate.metric.read(after), gate.relative)
    if found is None:
        return Verdict(gate, None, True, f"{gate.metric.name} was not measured in both runs")
    failed = _OPS[gate.op](found, gate.limit)
    shown = _change_text(found, gate.relative, gate.metric.digits)
    return Verdict(gate, found, failed, f"changed {shown}")


def _value_text(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _change_text(value: float | None, relative: bool, digits: int = 1) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf%" if value > 0 else "-inf%"
    return f"{value * 100:+.1f}%" if relative else f"{value:+.{digits}f}"


def format_comparison(base: RunSummary, new: RunSummary, verdicts: list[Verdict]) -> str:
    b, n = base.meta, new.meta
    lines = [
        f"base: run {base.run_id} ({b.workload}, {b.arrival}, {b.users} users, "
        f"{base.duration_s:.0f} s, {base.total.requests} requests)",
        f"new:  run {new.run_id} ({n.workload}, {n.arrival}, {n.users} users, "
        f"{new.duration_s:.0f} s, {new.total.requests} requests)",
    ]
    if b.workload_sha256 != n.workload_sha256:
        lines.append("note: the two runs used different workloads (their contents differ)")
    embedded = b.target_kind == n.target_kind == "embedded emulator"  # (on any free port)
    if b.target != n.target and not embedded:
        lines.append(f"note: different targets: {b.target} vs {n.target}")
    before, after = _groups(base), _groups(new)
    names = sorted(set(before) | set(after), key=lambda name: (name == "all", name))
    header = f"{'group':<28}{'metric':<18}{'base':>12}{'new':>12}{'change':>10}"
    lines += ["", header, "-" * len(header)]
    for name in names:
        left, right = before.get(name), after.get(name)
        for i, metric in enumerate(METRICS):
            old_value = metric.read(left) if left is not None else None
            new_value = metric.read(right) if right is not None else None
            lines.append(
                f"{name if i == 0 else '':<28}{metric.label:<18}"
                f"{_value_text(old_value, metric.digits):>12}"
                f"{_value_text(new_value, metric.digits):>12}"
                f"{_change_text(change(old_value, new_value, True), True):>10}"
            )
    if verdicts:
        lines.append("")
        for verdict in verdicts:
            word = "FAIL" if verdict.failed else "PASS"
            lines.append(
                f"{word} {verdict.gate.text} [{verdict.gate.group_name}]: {verdict.reason}"
            )
    return "\n".join(lines)
