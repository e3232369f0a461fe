"""Load sweeps for capacity planning: the steps, their figures, and the capacity they show.

A sweep steps the number of users (closed loop) or the arrival rate (open loop) from
``start`` by ``step`` every ``step_duration_s`` up to ``stop``. Requests belong to the step
in which they were meant to start (their intended start, open loop), whenever they finish.

**Capacity** is the highest step that met every SLO *and held its load*, overall and per
model x speed. A step that met the SLOs is not enough: a rate step whose requests were not
done is not a rate the target sustained, even if the few that finished were fast.

**Holding the load (rate sweeps).** Of the requests a step was due to start
(``offered x step duration``), at least ``HOLD_FRACTION`` (90%) must be *done*:

- done = answered successfully, plus the requests the end of the run cut while a healthy
  target would still have been serving them. A run ends right after its last step, so that
  step's latest requests are cut (outcome ``cancelled``) through no fault of the target; by
  Little's law a target that keeps up has ``rate x mean E2E`` requests in flight at any
  moment. The allowance is that figure, with the mean E2E of the sweep's *lightest* step
  (the least loaded, near the unloaded service time; not the step's own, which grows when
  requests pile up), plus three Poisson standard deviations; only the run's last step gets
  it. Cut requests beyond it had piled up: they count as not done.
- due = ``offered x step duration``, or the starts the schedule actually drew when they
  fall short of it by no more than Poisson chance (three standard deviations) and were on
  time: a Poisson schedule draws fewer starts than the mean about half the time, and the
  target cannot be blamed for requests nobody sent. A shortfall with late starts is the
  generator's backlog, not chance, so then the nominal figure counts.
- ``achieved_requests_per_s`` stays the plain count: successful requests of the step / step
  duration; ``held`` is done / due.

**Who fell behind** when a rate step did not hold:

- the *target*, when failed requests alone put it under 90% (a late start does not make a
  request fail), or when the starts went out on schedule (completions lagged: requests
  piled up in flight, took longer, failed);
- the *load generator*, when it could not keep the schedule: at least
  ``GENERATOR_LATE_SHARE`` (10%) of the step's starts went out more than
  ``GENERATOR_LATE_MS`` (100 ms, well above a healthy scheduler's jitter of a few ms) after
  their intended start (``queue_ms`` = send - intended start), or starts were missing beyond
  Poisson chance (the scheduler never skips a start: a missing one was due and never made);
- except that late starts count against the *target* when the run waited for the in-flight
  cap (``--max-in-flight``) and the step's mean E2E was at least ``SLOWDOWN`` (2x) the
  lightest step's: the target slowed down, its requests filled the cap, and the starts waited
  for them.

A step the generator failed to offer says nothing about the target: it is not counted as
held, and it is no knee either. The **knee** is the first step above the capacity that broke
an SLO or where the target fell behind; without one the result is a lower bound ("no knee
found: capacity >= X") and the JSON says ``knee_found: false`` with ``capacity_lower_bound``.

Limits of the count: a request is credited to the step it was meant to start in, however
late it finishes, so a target that queues without bound in a step that is not the last still
finishes that step's requests later (in the next step's time). That shows as growing latency
(a ``schedule_ttft`` SLO catches it), not as a shortfall of this count; only the run's last
step, where the run cuts the queue, shows it as one. A step shorter than a few request
latencies cannot be judged at the end of the run (the allowance covers most of it).

**Users sweeps** (closed loop) step a user count: each user waits for its answer, so the
achieved rate is whatever the target's latency allows and is not compared with the offered
figure; the 90% rule does not apply (``holds_load`` is None) and only the SLOs decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from loadkit.aggregate import Aggregate, Group, combine
from loadkit.results import SweepSection, SweepStep
from loadkit.sketch import Sketch
from loadkit.slo import SLO, metric_value

SweepKind = Literal["users", "rate"]

HOLD_FRACTION = 0.9  # a rate step holds its load when this share of its due requests are done
GENERATOR_LATE_MS = 100.0  # a start this much after its schedule is late (the generator's)
GENERATOR_LATE_SHARE = 0.1  # this share of late starts: the generator fell behind
POISSON_SIGMAS = 3.0  # counts within this many standard deviations are chance
SLOWDOWN = 2.0  # a mean E2E this many times the lightest step's: the target slowed down


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


def share_above(sketch: Sketch, threshold: float) -> float | None:
    """The share of a sketch's values above ``threshold`` (within the sketch's 1% error)."""
    if sketch.count == 0:
        return None
    if (sketch.quantile(1.0) or 0.0) <= threshold:
        return 0.0
    if (sketch.quantile(0.0) or 0.0) > threshold:
        return 1.0
    low, high = 0.0, 1.0  # quantile(low) <= threshold < quantile(high)
    for _ in range(24):
        middle = (low + high) / 2
        if (sketch.quantile(middle) or 0.0) <= threshold:
            low = middle
        else:
            high = middle
    return 1.0 - (low + high) / 2


def cut_allowance(rate_per_s: float, e2e_ms: float | None) -> int:
    """Requests a healthy target has in flight at any moment (Little's law: rate x mean
    E2E), plus three Poisson standard deviations: what the end of a run may fairly cut."""
    if not e2e_ms:
        return 0
    in_flight = rate_per_s * e2e_ms / 1000
    return math.ceil(in_flight + POISSON_SIGMAS * math.sqrt(in_flight))


def lightest_e2e_ms(groups: Iterable[Group]) -> float | None:
    """The lowest mean E2E of successful requests among these groups (one per step)."""
    means = [m for g in groups if (m := g.sketches["e2e_ms"].mean) is not None]
    return min(means) if means else None


def _load_check(
    offered_per_s: float,
    duration_s: float,
    group: Group,
    baseline_e2e_ms: float | None,
    final: bool,
    cap_waits: int,
) -> dict[str, Any]:
    """Whether a rate step held its load, and if not who fell behind (see the module doc)."""
    starts = group.totals["requests"]
    ok = group.outcomes.get("ok", 0)
    cut = group.outcomes.get("cancelled", 0)
    failed = starts - ok - cut
    due = offered_per_s * duration_s
    queue = group.sketches["queue_ms"]
    late_share = share_above(queue, GENERATOR_LATE_MS)
    queue_p99 = queue.quantile(0.99)
    late = late_share is not None and late_share >= GENERATOR_LATE_SHARE
    missing = max(0.0, due - starts)
    missing_by_chance = missing <= POISSON_SIGMAS * math.sqrt(due)
    expected = min(starts, due) if missing_by_chance and not late else due
    excused = min(cut, cut_allowance(offered_per_s, baseline_e2e_ms)) if final else 0
    done = ok + excused
    held = done / expected if expected > 0 else None
    holds = held is None or held >= HOLD_FRACTION
    e2e_mean = group.sketches["e2e_ms"].mean
    slowdown = e2e_mean / baseline_e2e_ms if e2e_mean and baseline_e2e_ms else None
    slowed = slowdown is not None and slowdown >= SLOWDOWN

    behind: str | None = None
    if not holds:
        if failed > (1 - HOLD_FRACTION) * expected:
            behind = "target"
        elif late or not missing_by_chance:
            behind = "target" if cap_waits and slowed else "generator"
        else:
            behind = "target"
    lateness = (
        f"{late_share:.0%} over {GENERATOR_LATE_MS:g} ms late, p99 {queue_p99:,.0f} ms"
        if late_share is not None and queue_p99 is not None
        else "lateness unknown"
    )
    reason: str | None = None
    if behind == "target":
        parts = [f"{done} of {expected:.0f} due requests done"]
        if not late:
            parts.append(f"starts on time ({lateness})")
        elif cap_waits:
            parts.append(f"starts waited for the in-flight cap its requests filled ({lateness})")
        else:
            parts.append(f"starts late too ({lateness})")
        if failed:
            parts.append(f"{failed} failed")
        if cut > excused:
            parts.append(
                f"{cut} still in flight when the run ended"
                + (f" ({excused} excused)" if final else "")
            )
        if slowdown is not None and slowdown >= 1.5:
            parts.append(f"E2E {slowdown:.1f}x the lightest step's")
        reason = "; ".join(parts)
    elif behind == "generator":
        parts = [f"starts late ({lateness})"] if late else []
        if not missing_by_chance:
            parts.append(
                f"{missing:.0f} of {due:.0f} due starts never made"
                + ("" if late else f" (those made were on time: {lateness})")
            )
        parts.append(
            "the in-flight cap was reached: raise --max-in-flight or add workers"
            if cap_waits
            else "add workers (--processes) or give them more CPU"
        )
        reason = "; ".join(parts)
    return {
        "due_requests": round(due, 1),
        "started_per_s": round(starts / duration_s, 3),
        "cut": cut,
        "cut_excused": excused,
        "held": None if held is None else round(held, 3),
        "holds_load": holds,
        "late_start_share": None if late_share is None else round(late_share, 4),
        "fell_behind": behind,
        "behind_reason": reason,
    }


def step_row(
    plan: SweepPlan,
    index: int,
    groups: dict[tuple[str, str], Group],
    slos: list[SLO],
    *,
    baseline_e2e_ms: float | None = None,
    final: bool = False,
    cap_waits: int = 0,
    load_share: float = 1.0,
) -> dict[str, Any]:
    """One step's figures and verdicts.

    ``met_slos`` is the SLOs alone (what the live early stop looks at); ``met`` adds, for rate
    sweeps, whether the step held its load. ``baseline_e2e_ms`` (the sweep's lightest mean
    E2E) and ``final`` (the run's last step) let the end-of-run cut be excused fairly;
    ``cap_waits`` (the run's waits for the in-flight cap) lets late starts be blamed on a
    target that filled the cap; ``load_share`` is the share of the step's load these groups
    drew (per model x speed judgements)."""
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

    met_slos = all(v["passed"] for v in verdicts)
    if plan.kind == "rate":
        load = _load_check(
            plan.load(index) * load_share, duration, group, baseline_e2e_ms, final, cap_waits
        )
    else:
        load = {"holds_load": None, "held": None, "fell_behind": None, "behind_reason": None}
    return {
        "step": index,
        "offered": plan.load(index),
        "requests": group.totals["requests"],
        "achieved_requests_per_s": round(group.outcomes.get("ok", 0) / duration, 3),
        "output_tokens_per_s": round(group.totals["output_tokens"] / duration, 1),
        "ttft_ms": {"p50": q("ttft_ms", 0.5), "p95": q("ttft_ms", 0.95), "p99": q("ttft_ms", 0.99)},
        "schedule_ttft_ms_p95": q("schedule_ttft_ms", 0.95),
        "queue_ms_p99": q("queue_ms", 0.99),
        "e2e_ms_mean": None if (m := group.sketches["e2e_ms"].mean) is None else round(m, 2),
        "otps_p50": q("otps", 0.5),
        "error_rate": metric_value(group, "error_rate", duration),
        "rate_limited_rate": metric_value(group, "rate_limited_rate", duration),
        "slos": verdicts,
        "met_slos": met_slos,
        **load,
        "met": met_slos and load["holds_load"] is not False,
    }


def _knee(rows: list[dict[str, Any]], capacity: float | None) -> dict[str, Any] | None:
    """The first step above the capacity that broke an SLO or where the target fell behind
    (a step the load generator failed to offer is neither a knee nor a capacity)."""
    for row in rows:
        if capacity is not None and row["offered"] <= capacity:
            continue
        broken = [v["slo"] for v in row["slos"] if not v["passed"]]
        target = row["fell_behind"] == "target"
        if not broken and not target:
            continue
        causes = []
        if broken:
            causes.append("broke " + ", ".join(broken))
        if target:
            causes.append(f"the target fell behind (held {row['held']:.0%})")
        return {"step": row["step"], "offered": row["offered"], "reason": "; ".join(causes)}
    return None


def _capacity(rows: list[dict[str, Any]]) -> tuple[float | None, dict[str, Any] | None]:
    passing = [r["offered"] for r in rows if r["met"]]
    capacity = max(passing) if passing else None
    return capacity, _knee(rows, capacity)


def analyse(plan: SweepPlan, aggregate: Aggregate, slos: list[SLO], completed: int) -> SweepSection:
    """The table of the ``completed`` first steps, the capacity overall and per group, and
    whether a knee was found (else the capacity is only a lower bound)."""
    steps = aggregate.slices("step")
    last = max(steps) if steps else None  # the step the end of the run cut, if completed
    cap_waits = aggregate.schedule.get("cap_waits", 0)
    indices = [i for i in range(completed) if i in steps]
    baseline = lightest_e2e_ms(combine(steps[i].values()) for i in indices)
    rows = [
        step_row(plan, i, steps[i], slos, baseline_e2e_ms=baseline, final=i == last,
                 cap_waits=cap_waits)
        for i in indices
    ]  # fmt: skip
    capacity, knee = _capacity(rows)
    per_group: dict[str, float | None] = {}
    knee_by_group: dict[str, bool] = {}
    names = sorted({key for groups in steps.values() for key in groups})
    for model, speed in names:
        key = (model, speed)
        scoped = [s for s in slos if s.model in (None, model) and s.speed in (None, speed)]
        present = [i for i in indices if key in steps[i]]
        group_baseline = lightest_e2e_ms(steps[i][key] for i in present)
        group_rows = []
        for index in present:
            started = sum(g.totals["requests"] for g in steps[index].values())
            share = steps[index][key].totals["requests"] / started if started else 1.0
            group_rows.append(
                step_row(plan, index, {key: steps[index][key]}, scoped,
                         baseline_e2e_ms=group_baseline, final=index == last,
                         cap_waits=cap_waits, load_share=share)
            )  # fmt: skip
        best, group_knee = _capacity(group_rows)
        per_group[f"{model} {speed}"] = best
        knee_by_group[f"{model} {speed}"] = group_knee is not None
    return SweepSection.model_validate({
        "kind": plan.kind,
        "plan": {"start": plan.start, "step": plan.step, "step_duration_s": plan.step_duration_s,
                 "stop": plan.stop},
        "steps": rows,
        # the highest step that met every SLO and held its load
        "capacity": capacity,
        "knee_found": knee is not None,
        "knee": knee,
        # no knee: the target's capacity is at least this (None when a knee was found)
        "capacity_lower_bound": capacity if knee is None else None,
        "capacity_by_group": per_group,
        "knee_found_by_group": knee_by_group,
        "hold_fraction": HOLD_FRACTION if plan.kind == "rate" else None,
    })  # fmt: skip


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


def unit(result: SweepSection) -> str:
    return "users" if result.kind == "users" else "req/s offered"


def verdict(row: SweepStep) -> str:
    """'met', 'BROKEN' (an SLO), 'NOT HELD (target|generator)', or both."""
    parts = []
    if not row.met_slos:
        parts.append("BROKEN")
    if row.holds_load is False:
        parts.append(f"NOT HELD ({row.fell_behind or 'unknown'})")
    return ", ".join(parts) or "met"


def capacity_label(result: SweepSection) -> str:
    """A short label for a chart: 'capacity X' with a knee, 'capacity >= X (no knee)'."""
    capacity = result.capacity
    if capacity is None:
        return "no capacity"
    if result.knee_found:
        return f"capacity {capacity:g}"
    return f"capacity >= {capacity:g} (no knee)"


def capacity_line(result: SweepSection) -> str:
    """The sweep's conclusion in one line (the text and the HTML report say the same)."""
    capacity, knee, what = result.capacity, result.knee, unit(result)
    held = " and held its load" if result.kind == "rate" else ""
    if knee is not None:
        at = f"knee at {knee.offered:g} {what}: {knee.reason}"
        if capacity is None:
            return f"capacity: none: no step met every SLO{held} ({at})"
        return f"capacity: {capacity:g} {what} ({at})"
    behind = [
        r for r in result.steps
        if r.fell_behind == "generator" and (capacity is None or r.offered > capacity)
    ]  # fmt: skip
    why = (
        f"the load generator fell behind at {behind[0].offered:g} {what}, so the target "
        "was not measured above it"
        if behind
        else f"every step met the SLOs{held}: raise --sweep-stop to find the knee"
    )
    if capacity is None:
        if not result.steps:
            return "capacity: no step completed"
        return f"no knee found: no step met every SLO{held} ({why})"
    return f"no knee found: capacity >= {capacity:g} {what} ({why})"


def format_sweep(result: SweepSection) -> str:
    rate = result.kind == "rate"
    lines = [
        f"sweep ({unit(result)}): step, offered, achieved req/s, held, out tok/s, "
        "TTFT p50/p95/p99 ms, OTPS p50, errors, 429s, late starts, verdict"
    ]

    def fmt(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    notes = []
    for row in result.steps:
        ttft = row.ttft_ms
        lines.append(
            f"  {row.step:>3} {row.offered:>9g} {row.achieved_requests_per_s:>9.2f} "
            f"{pct(row.held):>5} {row.output_tokens_per_s:>10.1f} "
            f"{fmt(ttft.p50):>7}/{fmt(ttft.p95)}/{fmt(ttft.p99)} "
            f"{fmt(row.otps_p50, 1):>8} {(row.error_rate or 0):>7.1%} "
            f"{(row.rate_limited_rate or 0):>6.1%} {pct(row.late_start_share):>5}  "
            f"{verdict(row)}"
        )
        if row.fell_behind:
            who = "load generator" if row.fell_behind == "generator" else row.fell_behind
            notes.append(f"  step {row.step}: the {who} fell behind: {row.behind_reason}")
    lines.extend(notes)
    if rate:
        lines.append(
            "  held: requests done / due (those cut by the run's end count as done up to what "
            f"a healthy target has in flight); under {HOLD_FRACTION:.0%}: NOT HELD"
        )
        lines.append(
            f"  late starts: share of starts sent over {GENERATOR_LATE_MS:g} ms after their "
            f"schedule; {GENERATOR_LATE_SHARE:.0%} or more: the load generator fell behind"
        )
    else:
        lines.append(
            "  closed loop: offered is a user count, so achieved req/s is not held against "
            f"it (the {HOLD_FRACTION:.0%} rule applies to rate sweeps); the SLOs decide"
        )
    lines.append(capacity_line(result))
    knees = result.knee_found_by_group
    for name, value in result.capacity_by_group.items():
        shown = "-" if value is None else f"{value:g}"
        if value is not None and not knees.get(name, True):
            shown = f">= {shown} (no knee)"
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)
