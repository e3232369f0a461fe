"""The results schema: one typed, versioned document per run (``--summary-json``).

``RunSummary`` is what every reader of a finished run reads: ``loadkit compare``, CI gates,
the web UI's ``summary.json``. Its JSON Schema is published as ``docs/results-schema.json``.
Version 1 types every section: the run's metadata, the per-model x speed figures, and the
sections a scenario adds (fallback policy and validation, sweep, open loop, SLOs, cost guard,
accounting, InfluxDB, time windows). Readers take the typed object, never a dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

SCHEMA_VERSION: Final = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Percentiles(_Strict):
    """Percentiles of one per-request metric; None when no request had a value."""

    p10: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


class ServedFigures(_Strict):
    requests: int
    ttft_ms: Percentiles
    otps: Percentiles
    e2e_ms: Percentiles


class ContentFigures(_Strict):
    """Requests whose answer was rebuilt (conversations, tools, thinking; ``requests``: those
    whose stream was read). ``ttft_text_ms``: to the first text token (``ttft_ms`` is to the
    first token of any kind, thinking included). Output tokens split by kind: ``usage`` does
    not split them, so each answer's are shared out by the characters of its thinking, text
    and tool-input JSON. ``tool_round_trip_ms``: tool_result turns, from the end of the answer
    that called the tool to the first token of the answer to its result (tool latency
    included)."""

    requests: int
    ttft_text_ms: Percentiles
    thinking_tokens: int
    text_tokens: int
    tool_use_tokens: int
    tool_calls: int
    tool_round_trip_ms: Percentiles


class TurnFigures(_Strict):
    """The requests of one turn index of the conversations (``turn`` from 1; tool_result
    requests have their own index), over every model x speed. ``cache_read_share``: cache
    reads over all input tokens (input + cache reads + cache writes)."""

    turn: int
    requests: int
    ttft_ms: Percentiles
    cache_read_share: float | None
    cost_usd: float


class FallbackFigures(_Strict):
    fell_back: int
    fallback_rate: float | None
    success_rate: float | None
    attempts_per_request: float | None
    wait_s: float
    cache_tokens_lost: int
    violations: dict[str, int]


class OutputTargetFigures(_Strict):
    """Adherence to output-length targets (``output_tokens_target``): ``requests`` that asked
    for one and ended (any outcome); ``measured``, those that completed, whose ratio output
    tokens / target is summarised (``ratio`` p10/p50/p90), with the share of them within
    +-20% of the target and the share cut by ``max_tokens`` (``stop_reason``)."""

    requests: int
    measured: int
    ratio: Percentiles
    within_20pct: float | None
    at_max_tokens: float | None


class GroupFigures(_Strict):
    """One model x speed's figures, or all of them (``total``).

    ``requests`` ended (completed or failed); ``cancelled`` were cut by the run's end and are
    neither. ``ttft_ms``/``otps``/``e2e_ms`` cover every request as its user waited for it;
    ``served`` splits them by how the server served it (``as_asked`` or ``fell_back``).
    """

    requests: int
    ok: int
    failures: int
    failure_ratio: float
    cancelled: int
    outcomes: dict[str, int]
    failures_by_type: dict[str, int]
    rate_limited: int
    responses_429: int
    # 429 answers by "speed/limit" (the attempt's speed; limit: fast_input_tokens,
    # fast_output_tokens, requests, input_tokens, output_tokens, acceleration)
    responses_429_by_cause: dict[str, int] = {}
    attempts: int
    fallbacks: int
    ttft_ms: Percentiles
    otps: Percentiles
    e2e_ms: Percentiles
    served: dict[Literal["as_asked", "fell_back"], ServedFigures]
    itl_ms: Percentiles
    queue_ms: Percentiles
    schedule_ttft_ms: Percentiles
    content: ContentFigures | None = None  # when answers were rebuilt (content mode)
    requests_per_s: float
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    input_tokens_per_s: float
    output_tokens_per_s: float
    cache_hit_ratio: float | None
    cost_usd: float
    rate_limit_headroom: dict[str, int | str]
    fallback: FallbackFigures
    attempt_outcomes: dict[str, int]
    output_target: OutputTargetFigures | None = None  # when requests asked for a length


class ModelGroup(GroupFigures):
    model: str
    speed: str


class DatasetGroup(GroupFigures):
    """The requests whose prompt came from one dataset (``index``: its place in the
    workload's ``datasets``), over every model x speed."""

    dataset: str
    index: int


class Versions(_Strict):
    loadkit: str
    locust: str | None
    anthropic: str | None
    python: str


class RunMeta(_Strict):
    """What was run, against what, with which tools: enough to tell two runs apart."""

    started_at: str  # ISO 8601, UTC
    workload: str  # the workload's name
    workload_sha256: str  # of the workload as the run used it (canonical JSON)
    target: str  # the target's URL, credentials removed
    # "embedded emulator" (started by the run), "emulator" (a loadkit emulator given as the
    # target) or "api" (anything else: the real API, a gateway)
    target_kind: Literal["embedded emulator", "emulator", "api"]
    users: int | None
    spawn_rate: float | None
    run_time_s: float | None  # -t, when given
    arrival: str  # "closed loop", "open loop, poisson 20/s", "sweep rate 10..40 step 5"
    processes: int  # load-generating processes (1, or the workers seen at the end)
    http_stack: str
    versions: Versions
    git_commit: str | None  # loadkit's checkout, when it is one


class PolicySection(_Strict):
    """The fallback policy the run used and the retry amplification it caused."""

    policy: str
    max_retries: int
    max_wait_s: float
    reissues: int
    amplification: float | None  # attempts per request; None before any request ended
    amplification_bound: float  # the most attempts per request the policy allows


class OpenLoopSection(_Strict):
    """Open-loop arrivals: starts scheduled, late (by more than the late threshold), waits
    for the in-flight cap, starts due but not made when the run ended."""

    scheduled: int = 0
    late: int = 0
    cap_waits: int = 0
    not_started: int = 0
    start_lateness_ms_p50: float | None = None
    start_lateness_ms_p99: float | None = None


class TraceSection(_Strict):
    """A trace replay (``--trace``): which trace, how it was replayed, and whether every
    entry was sent and answered (never, looping)."""

    path: str
    format: str
    sha256: str
    entries: int
    speedup: float
    loop: bool
    processes: int  # that sent it, each its share
    completed: bool


class StepVerdict(_Strict):
    slo: str
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool


class StepLatency(_Strict):
    p50: float | None
    p95: float | None
    p99: float | None


class SweepStep(_Strict):
    """One sweep step. The load fields (``held`` to ``behind_reason``) judge rate sweeps only."""

    step: int
    offered: float
    requests: int
    achieved_requests_per_s: float
    output_tokens_per_s: float
    ttft_ms: StepLatency
    schedule_ttft_ms_p95: float | None
    queue_ms_p99: float | None
    e2e_ms_mean: float | None
    otps_p50: float | None
    error_rate: float | None
    rate_limited_rate: float | None
    slos: list[StepVerdict]
    met_slos: bool
    met: bool
    holds_load: bool | None
    held: float | None
    fell_behind: Literal["target", "generator"] | None
    behind_reason: str | None
    due_requests: float | None = None
    started_per_s: float | None = None
    cut: int | None = None
    cut_excused: int | None = None
    late_start_share: float | None = None


class SweepPlanFigures(_Strict):
    start: float
    step: float
    step_duration_s: float
    stop: float


class Knee(_Strict):
    step: int
    offered: float
    reason: str


class SweepSection(_Strict):
    kind: Literal["rate", "users"]
    plan: SweepPlanFigures
    steps: list[SweepStep]
    capacity: float | None  # the highest step that met every SLO (and held its load)
    knee_found: bool
    knee: Knee | None
    capacity_lower_bound: float | None  # no knee: the capacity is at least this
    capacity_by_group: dict[str, float | None]
    knee_found_by_group: dict[str, bool]
    hold_fraction: float | None


class SloResult(_Strict):
    slo: str
    scope: str
    value: float | None
    passed: bool


class SloSection(_Strict):
    passed: bool
    results: list[SloResult]
    goodput_per_s: float  # requests/s that met every SLO
    good_requests: int


class CostGuardSection(_Strict):
    cap_usd: float
    spent_usd: float
    stopped: bool


class TimeWindow(_Strict):
    """One time window, by intended start."""

    t_s: int
    requests: int
    ok: int
    output_tokens: int
    ttft_ms_p50: float | None
    schedule_ttft_ms_p50: float | None
    schedule_ttft_ms_p99: float | None


class AccountingSection(_Strict):
    """The harness's attempts against the emulator's counters; ``available`` False (with
    ``reason``) when the emulator could not be asked."""

    available: bool = True
    reason: str | None = None
    emulator_received: int | None = None
    harness_sent: int | None = None
    mismatches: list[str]
    cancelled_or_timed_out: int | None = None
    cancelled_closed_by_client: int | None = None
    cancelled_answered_as: dict[str, int] | None = None


class ValidationCheck(_Strict):
    check: str
    passed: bool
    measured: str


class ValidationSection(_Strict):
    breaches: int
    fast_429_attempts: int  # fast attempts answered 429 for fast mode's limit
    checks: list[ValidationCheck]


class InfluxSection(_Strict):
    written: int
    dropped: int
    failed_writes: int
    rejected: int
    rejection: str


class WorkerFate(_Strict):
    """One worker of a distributed run as the master saw it (``locust_plugin/workers.py``)."""

    worker: str  # Locust's client id: the worker's hostname and a random suffix
    index: int | None
    # "lost": its final report never came (killed, cut off to the end): what it did after its
    # last report is missing from the figures; "rejoined": it went missing and came back, and
    # its queued reports were merged
    fate: Literal["reported to the end", "rejoined", "lost"]
    reports: int
    last_report_s: float | None  # seconds after the run's start
    requests_reported: int
    attempts_reported: int  # attempts sent, as its reports said (reconciled with the emulator)
    in_flight_at_last_report: int  # requests it had in flight when it sent its last report
    missing_s: list[list[float | None]]  # [went missing, came back (None: never)], in s


class WorkersSection(_Strict):
    """A distributed run's workers: lost and rejoined ones, and what the lost ones left out.

    ``unreported_attempts``: attempts the emulator received from lost workers that no report
    carried; ``unanswered_by_outcome``: how the emulator ended them and the
    ``cancelled_or_timed_out`` attempts (exactly the former when that is 0).
    """

    workers: list[WorkerFate]
    lost: int
    rejoined: int
    locust_behaviour: str
    unreported_attempts: int | None = None
    unanswered_by_outcome: dict[str, int] | None = None
    cancelled_or_timed_out: int | None = None


class RunSummary(BaseModel):
    """One run's results. Sections absent from a run (no sweep, no SLOs...) are left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    run_id: str
    duration_s: float
    meta: RunMeta
    groups: list[ModelGroup]
    total: GroupFigures
    by_dataset: list[DatasetGroup] | None = None
    policy: PolicySection | None = None
    open_loop: OpenLoopSection | None = None
    trace: TraceSection | None = None
    sweep: SweepSection | None = None
    slos: SloSection | None = None
    cost_guard: CostGuardSection | None = None
    over_time: list[TimeWindow] | None = None
    by_turn: list[TurnFigures] | None = None  # conversations: per turn index
    accounting: AccountingSection | None = None
    validation: ValidationSection | None = None
    influxdb: InfluxSection | None = None
    workers: WorkersSection | None = None
    breaches: list[str] | None = None
    interrupted_by: str | None = None
    exit_code: int | None = None
    exit_reason: str | None = None


class ResultsError(ValueError):
    """A results file that cannot be read; the message names the file and the problem."""


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan) replaced by None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def summary_json(summary: RunSummary) -> str:
    """The document as written: the fields a run set, sorted, strict JSON."""
    data = finite(summary.model_dump(mode="json", exclude_unset=True))
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def load_summary(path: str | Path) -> RunSummary:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise ResultsError(f"{source}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{source}: not UTF-8 text (is it a results JSON file?)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{source}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: not a loadkit results document (a JSON object)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        found = "none" if version is None else repr(version)
        raise ResultsError(
            f"{source}: schema_version {found}; this loadkit reads version {SCHEMA_VERSION} "
            "(files written by --summary-json)"
        )
    try:
        return RunSummary.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ResultsError(
            f"{source}: {where}: {first['msg']} ({err.error_count()} problem(s))"
        ) from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the current version (``docs/results-schema.json``)."""
    return RunSummary.model_json_schema()
