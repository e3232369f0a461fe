"""Run statistics per model x speed: counts, sketches, tokens, cost, rate-limit headroom.

Workers send what they gathered since their last report (``take_wire``); the master merges
those into its totals (``merge_wire``), so percentiles over all workers come from merged
sketches, not from averaged percentiles.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from loadkit.record import Outcome, ResultRecord
from loadkit.sketch import Sketch

SKETCHES = (
    "ttft_ms",
    "otps",
    "e2e_ms",
    "itl_ms",
    "queue_ms",
    "schedule_ttft_ms",
    # content mode (conversations, tools, thinking): first text token; tool_result turns
    "ttft_text_ms",
    "tool_round_trip_ms",
    # split by how a request was served (``ResultRecord.served_as_asked``): at the speed
    # asked for, or fallen back to another
    "ttft_ms_as_asked",
    "otps_as_asked",
    "e2e_ms_as_asked",
    "ttft_ms_fell_back",
    "otps_fell_back",
    "e2e_ms_fell_back",
    # requests with an output-length target that completed: output tokens / target
    "output_ratio",
)
SERVED: tuple[Literal["as_asked"], Literal["fell_back"]] = ("as_asked", "fell_back")
TOTALS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "attempts",
    "fallbacks",
    "cache_tokens_lost",
    "wait_ms",
)


GONE_BEFORE_THE_END = (Outcome.CANCELLED, Outcome.TIMEOUT)
UNSENT = "unsent"  # interrupted before the request was fully written: no server saw it


def attempt_outcome(status: int) -> str:
    """The outcome of an attempt that was answered with ``status`` and then retried."""
    if status == 429:
        return Outcome.RATE_LIMITED.value
    if status == 529:
        return Outcome.OVERLOADED.value
    if status >= 500:
        return Outcome.API_ERROR.value
    if status >= 400:
        return Outcome.CLIENT_ERROR.value
    if status == 0:
        return Outcome.CONNECTION_ERROR.value
    return Outcome.OK.value


def add_content(group: Group, record: ResultRecord) -> None:
    """A request whose answer was rebuilt (content mode): its output tokens by kind, its tool
    calls, its first text token and, for a tool_result turn, the tool round trip."""
    totals = group.totals
    totals["content_requests"] += 1
    totals["thinking_tokens"] += record.thinking_tokens
    totals["text_tokens"] += record.text_tokens
    totals["tool_use_tokens"] += record.tool_use_tokens
    totals["tool_calls"] += record.tool_calls
    ttft_text = record.ttft_text_ms
    if ttft_text is not None:
        group.sketches["ttft_text_ms"].add(ttft_text)
    round_trip = record.tool_round_trip_ms
    if round_trip is not None:
        group.sketches["tool_round_trip_ms"].add(round_trip)


@dataclass
class Group:
    """Everything measured for one model x speed."""

    totals: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "outcome: error_type"
    # every HTTP attempt by "speed/outcome", for reconciling with the server's own counters
    attempt_outcomes: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)  # fallback policy breaches
    # 429 answers by "speed/cause" (the attempt's speed; loadkit.ratelimit_cause.CAUSES)
    causes_429: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    sketches: dict[str, Sketch] = field(default_factory=lambda: {k: Sketch() for k in SKETCHES})
    headroom: dict[str, tuple[str, float]] = field(default_factory=dict)  # header -> (value, at)

    def add(
        self,
        record: ResultRecord,
        now: float,
        violations: list[str] | None = None,
        good: bool = False,
    ) -> None:
        totals = self.totals
        if violations:
            self.violations.update(violations)
        if good:
            totals["good"] += 1
        totals["requests"] += 1  # every request, cancelled ones included
        cancelled = record.outcome is Outcome.CANCELLED
        how = "as_asked" if record.served_as_asked else "fell_back"
        if not cancelled:
            totals[f"served_{how}"] += 1
        totals["input_tokens"] += record.input_tokens
        totals["output_tokens"] += record.output_tokens
        totals["cache_read_input_tokens"] += record.cache_read_input_tokens
        totals["cache_creation_input_tokens"] += record.cache_creation_input_tokens
        attempts = record.attempts
        totals["attempts"] += len(attempts)
        if attempts:
            totals["wait_ms"] += round(record.retry_wait_s * 1000)
            tally = self.attempt_outcomes
            for attempt in attempts[:-1]:
                tally[f"{attempt.speed}/{attempt_outcome(attempt.status)}"] += 1
            last = attempts[-1]
            if not last.sent:
                last_outcome = UNSENT
            elif record.bad_usage is not None and record.error_type == "bad_usage":
                last_outcome = Outcome.OK.value  # the server completed it; its usage was bad
            elif last.status >= 400 and record.outcome in GONE_BEFORE_THE_END:
                # answered, and then cut by the run's end (say while waiting out retry-after)
                last_outcome = attempt_outcome(last.status)
            else:
                last_outcome = record.outcome.value
            tally[f"{last.speed}/{last_outcome}"] += 1
            totals["responses_429"] += record.responses_429
            for attempt in attempts:
                if attempt.rate_limit_cause is not None:
                    self.causes_429[f"{attempt.speed}/{attempt.rate_limit_cause}"] += 1
        totals["fallbacks"] += record.fell_back
        totals["cache_tokens_lost"] += record.cache_tokens_lost
        self.cost_usd += record.cost_usd
        if record.parsed_content:
            add_content(self, record)
        self.outcomes[record.outcome.value] += 1
        if record.outcome is not Outcome.OK:
            self.errors[f"{record.outcome.value}: {record.error_type}"] += 1
        sketches = self.sketches
        ttft = record.ttft_ms
        if ttft is not None:
            sketches["ttft_ms"].add(ttft)
            sketches[f"ttft_ms_{how}"].add(ttft)
            schedule_ttft = record.schedule_ttft_ms
            if schedule_ttft is not None:
                sketches["schedule_ttft_ms"].add(schedule_ttft)
        otps = record.otps
        if otps is not None:
            sketches["otps"].add(otps)
            sketches[f"otps_{how}"].add(otps)
        if record.ok:
            e2e = record.e2e_ms
            if e2e is not None:
                sketches["e2e_ms"].add(e2e)
                sketches[f"e2e_ms_{how}"].add(e2e)
        sketches["itl_ms"].add_all([gap / 1e6 for gap in record.itl_ns])
        if record.output_target > 0:
            add_adherence(self, record)
        if record.t_intended:
            sketches["queue_ms"].add(max(record.queue_delay_ms, 1e-6))
        for name, value in record.rate_limits.items():
            if name.endswith(("-remaining", "-limit")):
                self.headroom[name] = (value, now)

    def merge(self, other: Group) -> None:
        self.totals.update(other.totals)
        self.outcomes.update(other.outcomes)
        self.errors.update(other.errors)
        self.attempt_outcomes.update(other.attempt_outcomes)
        self.violations.update(other.violations)
        self.causes_429.update(other.causes_429)
        self.cost_usd += other.cost_usd
        for name, sketch in other.sketches.items():
            self.sketches[name].merge(sketch)
        for name, (value, at) in other.headroom.items():
            if name not in self.headroom or self.headroom[name][1] <= at:
                self.headroom[name] = (value, at)

    def to_wire(self) -> dict[str, Any]:
        return {
            "totals": dict(self.totals),
            "outcomes": dict(self.outcomes),
            "errors": dict(self.errors),
            "attempt_outcomes": dict(self.attempt_outcomes),
            "violations": dict(self.violations),
            "causes_429": dict(self.causes_429),
            "cost_usd": self.cost_usd,
            "sketches": {name: s.to_wire() for name, s in self.sketches.items()},
            "headroom": {name: list(v) for name, v in self.headroom.items()},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Group:
        group = cls(
            totals=Counter(data["totals"]),
            outcomes=Counter(data["outcomes"]),
            errors=Counter(data["errors"]),
            attempt_outcomes=Counter(data["attempt_outcomes"]),
            violations=Counter(data["violations"]),
            causes_429=Counter(data["causes_429"]),
            cost_usd=data["cost_usd"],
        )
        for name, wire in data["sketches"].items():
            group.sketches[name] = Sketch.from_wire(wire)
        group.headroom = {name: (v[0], v[1]) for name, v in data["headroom"].items()}
        return group


def add_adherence(group: Group, record: ResultRecord) -> None:
    """A request that asked for ``output_target`` tokens and ended: counted; if it completed,
    its ratio achieved/asked, whether that is within 20% of 1, and whether max_tokens cut it."""
    if record.outcome is Outcome.CANCELLED:  # cut by the run's end: no request that ended
        return
    totals = group.totals
    totals["targeted"] += 1
    if not record.ok:
        return
    ratio = record.output_tokens / record.output_target
    totals["targeted_ok"] += 1
    # |achieved - target| <= 20% of target, in integers (no rounding at the edges)
    totals["targeted_within_20pct"] += 5 * abs(record.output_tokens - record.output_target) <= (
        record.output_target
    )
    totals["targeted_at_max_tokens"] += record.stop_reason == "max_tokens"
    group.sketches["output_ratio"].add(ratio)


# ("step", k) for a sweep's steps, ("window", start_s) for time series, ("dataset", position
# in the workload) for prompt datasets
Slice = tuple[str, int]


class Aggregate:
    """Groups keyed by (model, speed), optional slices of them (sweep steps, time windows),
    the open-loop scheduler's counters, and the span of the run they cover."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], Group] = {}
        self.sliced: dict[tuple[str, int, str, str], Group] = {}
        self.schedule: Counter[str] = Counter()  # open loop: scheduled, late, cap_waits
        self.start_lateness = Sketch()  # open loop: actual - scheduled start, ms
        self.started_at = time.time()
        self.ended_at: float | None = None

    def group(self, model: str, speed: str) -> Group:
        key = (model, speed)
        found = self.groups.get(key)
        if found is None:
            found = self.groups[key] = Group()
        return found

    def slice_group(self, dimension: str, index: int, model: str, speed: str) -> Group:
        key = (dimension, index, model, speed)
        found = self.sliced.get(key)
        if found is None:
            found = self.sliced[key] = Group()
        return found

    def add(
        self,
        record: ResultRecord,
        violations: list[str] | None = None,
        slices: list[Slice] | None = None,
        good: bool = False,
    ) -> None:
        now = time.time()
        self.group(record.model, record.speed).add(record, now, violations, good)
        for dimension, index in slices or ():
            self.slice_group(dimension, index, record.model, record.speed).add(
                record, now, None, good
            )

    def take_wire(self) -> list[dict[str, Any]]:
        """What was gathered since the last call, as plain data; then start afresh."""
        wire = [
            {"model": model, "speed": speed, **group.to_wire()}
            for (model, speed), group in self.groups.items()
        ]
        wire.extend(
            {"slice": [dimension, index], "model": model, "speed": speed, **group.to_wire()}
            for (dimension, index, model, speed), group in self.sliced.items()
        )
        if self.schedule:
            wire.append(
                {"schedule": dict(self.schedule), "lateness": self.start_lateness.to_wire()}
            )
        self.groups, self.sliced = {}, {}
        self.schedule, self.start_lateness = Counter(), Sketch()
        return wire

    def merge_wire(self, wire: list[dict[str, Any]]) -> None:
        for item in wire:
            if "schedule" in item:
                self.schedule.update(item["schedule"])
                self.start_lateness.merge(Sketch.from_wire(item["lateness"]))
            elif "slice" in item:
                dimension, index = item["slice"]
                group = self.slice_group(dimension, index, item["model"], item["speed"])
                group.merge(Group.from_wire(item))
            else:
                self.group(item["model"], item["speed"]).merge(Group.from_wire(item))

    def slices(self, dimension: str) -> dict[int, dict[tuple[str, str], Group]]:
        out: dict[int, dict[tuple[str, str], Group]] = {}
        for (dim, index, model, speed), group in self.sliced.items():
            if dim == dimension:
                out.setdefault(index, {})[(model, speed)] = group
        return dict(sorted(out.items()))

    @property
    def elapsed_s(self) -> float:
        return max(1e-9, (self.ended_at or time.time()) - self.started_at)

    def total(self) -> Group:
        return combine(self.groups.values())

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def combine(groups: Any) -> Group:
    combined = Group()
    for group in groups:
        combined.merge(group)
    return combined
