"""Service-level objectives: parsing ``--slo`` expressions, judging a run, JUnit output.

Grammar: ``[model=NAME][,speed=SPEED]:METRIC OP VALUE``, e.g. ``ttft_p95_ms<=1500``,
``otps_p50>=40``, ``error_rate<=0.01``, ``model=claude-opus-4-6,speed=fast:ttft_p99_ms<=2500``.

Metrics: ``ttft_pNN_ms``, ``e2e_pNN_ms``, ``itl_pNN_ms``, ``schedule_ttft_pNN_ms`` (NN a
percentile, e.g. 50, 95, 99, 99.9), ``otps_pNN``, ``error_rate`` (failed / finished requests,
cancellations left out), ``rate_limited_rate``, ``requests_per_s``, ``output_tokens_per_s``.
Operators: ``<=``, ``<``, ``>=``, ``>``.

A request "meets every SLO" (for goodput) when it succeeded and each per-request threshold
holds for it: TTFT, E2E and schedule-relative TTFT at most, OTPS at least, the SLO's value.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from loadkit.aggregate import Aggregate, Group
from loadkit.record import Outcome, ResultRecord
from loadkit.results import SloResult, SloSection

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
_PERCENTILE = re.compile(r"^(ttft|e2e|itl|schedule_ttft|otps)_p(\d+(?:\.\d+)?)(_ms)?$")
_RATES = ("error_rate", "rate_limited_rate", "requests_per_s", "output_tokens_per_s")
_EXPRESSION = re.compile(
    r"^\s*(?:(?P<scope>[^:]+):)?\s*(?P<metric>[a-z_0-9.]+)\s*(?P<op><=|>=|<|>)\s*(?P<value>[-+0-9.eE]+)\s*$"
)
_SKETCH = {
    "ttft": "ttft_ms",
    "e2e": "e2e_ms",
    "itl": "itl_ms",
    "schedule_ttft": "schedule_ttft_ms",
    "otps": "otps",
}


class SLOError(ValueError):
    """An SLO expression that cannot be understood; the message says what is wrong."""


@dataclass(frozen=True)
class SLO:
    text: str
    metric: str
    op: str
    threshold: float
    model: str | None = None
    speed: str | None = None

    @property
    def scope(self) -> str:
        parts = [
            f"model={self.model}" if self.model else "",
            f"speed={self.speed}" if self.speed else "",
        ]
        return ",".join(p for p in parts if p) or "all"

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def measure(self, aggregate: Aggregate) -> float | None:
        group = _scoped_group(aggregate, self.model, self.speed)
        return metric_value(group, self.metric, aggregate.elapsed_s)

    def per_request(self) -> tuple[str, float] | None:
        """The per-request threshold this SLO implies, if any: (record attribute, bound)."""
        match = _PERCENTILE.match(self.metric)
        if match is None or match.group(1) == "itl":
            return None
        return {
            "ttft": "ttft_ms",
            "e2e": "e2e_ms",
            "schedule_ttft": "schedule_ttft_ms",
            "otps": "otps",
        }[match.group(1)], self.threshold


def parse_slo(text: str) -> SLO:
    found = _EXPRESSION.match(text)
    if found is None:
        raise SLOError(
            f"SLO {text!r}: expected [model=M,speed=S:]METRIC<=VALUE, e.g. ttft_p95_ms<=1500"
        )
    metric, op, raw = found.group("metric"), found.group("op"), found.group("value")
    if metric not in _RATES and not _PERCENTILE.match(metric):
        raise SLOError(
            f"SLO {text!r}: unknown metric {metric!r} (use ttft_pNN_ms, e2e_pNN_ms, itl_pNN_ms, "
            f"schedule_ttft_pNN_ms, otps_pNN, {', '.join(_RATES)})"
        )
    match = _PERCENTILE.match(metric)
    if match is not None:
        is_otps = match.group(1) == "otps"
        if is_otps == bool(match.group(3)):
            raise SLOError(
                f"SLO {text!r}: write {'otps_pNN' if is_otps else match.group(1) + '_pNN_ms'}"
            )
        if not 0 < float(match.group(2)) < 100:
            raise SLOError(f"SLO {text!r}: the percentile must be between 0 and 100")
    try:
        threshold = float(raw)
    except ValueError:
        raise SLOError(f"SLO {text!r}: {raw!r} is not a number") from None
    model = speed = None
    scope = found.group("scope")
    if scope:
        for part in scope.split(","):
            key, _, value = part.strip().partition("=")
            if key == "model" and value:
                model = value
            elif key == "speed" and value in ("standard", "fast"):
                speed = value
            else:
                raise SLOError(
                    f"SLO {text!r}: scope {part!r} must be model=NAME or speed=standard|fast"
                )
    return SLO(text.strip(), metric, op, threshold, model, speed)


def parse_slos(texts: list[str] | None) -> list[SLO]:
    """Each text may hold several expressions separated by ';'."""
    return [parse_slo(part) for text in texts or [] for part in text.split(";") if part.strip()]


def _scoped_group(aggregate: Aggregate, model: str | None, speed: str | None) -> Group:
    combined = Group()
    for (m, s), group in aggregate.groups.items():
        if (model is None or m == model) and (speed is None or s == speed):
            combined.merge(group)
    return combined


def metric_value(group: Group, metric: str, elapsed_s: float) -> float | None:
    requests = group.totals["requests"]
    finished = requests - group.outcomes.get("cancelled", 0)
    if metric == "error_rate":
        return (finished - group.outcomes.get("ok", 0)) / finished if finished else None
    if metric == "rate_limited_rate":
        return group.outcomes.get("rate_limited", 0) / finished if finished else None
    if metric == "requests_per_s":
        return requests / elapsed_s
    if metric == "output_tokens_per_s":
        return group.totals["output_tokens"] / elapsed_s
    match = _PERCENTILE.match(metric)
    assert match is not None
    return group.sketches[_SKETCH[match.group(1)]].quantile(float(match.group(2)) / 100)


def meets_request_slos(record: ResultRecord, slos: list[SLO]) -> bool:
    if record.outcome is not Outcome.OK:
        return False
    for slo in slos:
        if (slo.model and slo.model != record.model) or (slo.speed and slo.speed != record.speed):
            continue
        per_request = slo.per_request()
        if per_request is None:
            continue
        value = getattr(record, per_request[0])
        if value is None or not slo.holds(value):
            return False
    return True


@dataclass(frozen=True)
class Verdict:
    slo: SLO
    value: float | None

    @property
    def passed(self) -> bool:
        return self.value is not None and self.slo.holds(self.value)

    def line(self) -> str:
        shown = "no data" if self.value is None else f"{self.value:,.4g}"
        state = "PASS" if self.passed else "FAIL"
        return f"{state} {self.slo.text}: measured {shown} ({self.slo.scope})"


def judge(aggregate: Aggregate, slos: list[SLO]) -> list[Verdict]:
    return [Verdict(slo, slo.measure(aggregate)) for slo in slos]


def junit_xml(verdicts: list[Verdict], run_id: str, duration_s: float) -> str:
    failures = sum(not v.passed for v in verdicts)
    cases = []
    for verdict in verdicts:
        name = quoteattr(verdict.slo.text)
        body = ""
        if not verdict.passed:
            line = verdict.line()
            body = f'<failure message={quoteattr(line)} type="SLOBreach">{escape(line)}</failure>'
        cases.append(
            f'    <testcase classname="loadkit.slo" name={name} time="0">{body}</testcase>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuites name="loadkit" tests="{len(verdicts)}" failures="{failures}">\n'
        f'  <testsuite name={quoteattr("loadkit SLOs " + run_id)} tests="{len(verdicts)}" '
        f'failures="{failures}" errors="0" time="{duration_s:.3f}">\n'
        + "\n".join(cases)
        + "\n  </testsuite>\n</testsuites>\n"
    )


def slo_summary(verdicts: list[Verdict], good: int, elapsed_s: float) -> SloSection:
    return SloSection(
        passed=all(v.passed for v in verdicts),
        results=[
            SloResult(slo=v.slo.text, scope=v.slo.scope, value=v.value, passed=v.passed)
            for v in verdicts
        ],
        goodput_per_s=round(good / elapsed_s, 3),
        good_requests=good,
    )
