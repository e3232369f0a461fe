"""One ``Run`` per Locust ``Environment``: what this process knows of the current run, shared
by the users and every feature's event listeners (``run_of(environment)``), and the
``RunPlan`` the master (or local runner) sends its workers with each start.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import loadkit
from loadkit.accounting import EmulatorCounters
from loadkit.aggregate import Aggregate
from loadkit.client import RequestSpec, StreamingClient
from loadkit.datasets import DatasetPicker, dataset_names
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.fallback import FallbackPolicy, FallbackSettings
from loadkit.locust_plugin.capacity_settings import Settings
from loadkit.locust_plugin.targets import TargetPolicy
from loadkit.locust_plugin.trace_state import TraceReplay
from loadkit.locust_plugin.workers import InFlight, Workers
from loadkit.output_target import instruct
from loadkit.prompts import PromptFactory
from loadkit.results import RunSummary
from loadkit.workload import (
    MAX_CONTEXT_TOKENS,
    Sampler,
    Workload,
    WorkloadError,
    load_workload,
    parse_workload,
)

if TYPE_CHECKING:
    from loadkit.sinks.influxdb import InfluxSink

log = logging.getLogger("loadkit")
EMULATOR_KEY = "loadkit-emulator-key"
PLAN_KEY = "loadkit_plan"  # the one parsed_options attribute the master sends its workers
COUNT_RETRIES = 10  # count_tokens sizing a dataset: the SDK's retries (429s, 5xx)


def resolve_path(path: str) -> Path:
    """A path as given, or else relative to the loadkit checkout (for the shipped files)."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    shipped = Path(loadkit.__file__).resolve().parent.parent / path
    return shipped if shipped.exists() else given


def load_workload_option(path: str) -> Workload:
    return load_workload(resolve_path(path))


def fallback_settings(workload: Workload, options: Any) -> FallbackSettings:
    """The workload's fallback settings, with the policy from ``--fallback`` if given."""
    chosen = getattr(options, "fallback", "")
    if chosen:
        return workload.fallback.model_copy(update={"policy": chosen})
    return workload.fallback


@dataclass(frozen=True)
class RunPlan:
    """What every process of a run needs from the master (or local runner), decided once at
    each start: sent to the workers under one key of ``parsed_options``."""

    run_id: str
    target: str
    key_kind: Literal["emulator", "real"]  # which key the target gets (targets.py)
    embedded_url: str  # the embedded emulator's URL ("" when the target was given)
    workload: dict[str, Any]  # the workload as validated on the master
    workload_slos: tuple[str, ...]
    run_start: float  # time.time() of the start
    sweep_start: float
    cost_cap_per_process: float  # 0: no cap
    users_total: int

    def to_options(self, options: Any) -> None:
        setattr(options, PLAN_KEY, asdict(self))

    @classmethod
    def from_options(cls, options: Any) -> RunPlan | None:
        """The plan the master sent, or None when it sent none (its start was refused)."""
        data = getattr(options, PLAN_KEY, None)
        if not data:
            return None
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(
                f"the master sent a run plan this worker cannot read (fields {sorted(data)}, "
                f"expected {sorted(names)}): are master and workers the same loadkit version?"
            )
        return cls(**{**data, "workload_slos": tuple(data["workload_slos"])})


@dataclass
class Sinks:
    """The InfluxDB sink of this process, and the master's view of every process's."""

    sink: InfluxSink | None = None
    announced: bool = False
    totals: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Recovery:
    """The fallback scenario's mid-run lifting of the fast-mode limit."""

    greenlet: Any = None  # gevent.Greenlet
    baseline: dict[str, Any] | None = None  # emulator stats after the grace period
    recovered_at: float | None = None
    error: str = ""  # why the recovery could not be driven
    started_at: float = 0.0  # time.time() at the run's start


# An end check judges a finished run: it returns its breaches and the summary with its own
# section added.
EndCheck = Callable[["Run", RunSummary], tuple[list[str], RunSummary]]


class Role:
    """What a process does in a run. A local runner does everything."""

    name = "local"
    decides = True  # plans each start, judges the run, prints and writes its results
    sends = True  # runs users that send requests
    reports = False  # sends its figures to a master every few seconds
    collects = False  # merges its workers' figures


class Master(Role):
    name = "master"
    sends = False
    collects = True


class Worker(Role):
    name = "worker"
    decides = False
    reports = True


@dataclass
class Run:
    """What one process knows of the current run (one per Locust ``Environment``)."""

    environment: Any = None  # Locust's
    role: Role = field(default_factory=Role)  # set at init from Locust's runner
    plan: RunPlan | None = None  # this start's (None before one, or when it was refused)
    run_id: str = ""
    workload: Workload | None = None
    client: StreamingClient | None = None
    policy: FallbackPolicy | None = None
    fallback_settings: FallbackSettings | None = None
    sampler: Sampler | None = None
    prompts: PromptFactory | None = None
    datasets: DatasetPicker | None = None  # the workload's prompt datasets, sized
    #: totals of the run (local runner and master) or since the last report (worker)
    aggregate: Aggregate = field(default_factory=Aggregate)
    emulator: EmulatorProcess | None = None
    emulator_counters: EmulatorCounters | None = None
    finished: bool = False
    stopped: bool = False  # worker: its users were stopped (its next report is its last)
    stopping_at: int = 0  # perf_counter_ns when the run began to stop (0: it has not)
    final_reports: set[str] = field(default_factory=set)  # master: workers that sent theirs
    workers: Workers = field(default_factory=Workers)  # master: each worker's reports and fate
    in_flight: InFlight = field(default_factory=InFlight)  # requests being sent, not yet ended
    cache_ttl: str = "5m"
    interrupted_by: str = ""  # "SIGINT" or "SIGTERM" when a signal ended the run
    refused: bool = False  # this run could not start (its reason was given)
    refused_at_init: bool = False  # headless: the options were refused before any start
    targets: TargetPolicy | None = None  # master/local: the targets chosen at start
    capacity: Settings | None = None  # open loop, sweep, SLOs, cost guard (capacity.py)
    trace: TraceReplay | None = None  # --trace: this process's part of the replay
    budget_stopping: bool = False  # the cost guard has stopped the run
    sinks: Sinks = field(default_factory=Sinks)
    recovery: Recovery = field(default_factory=Recovery)
    #: Scenario checks run at the end on the master: (run, summary data) -> breaches.
    end_checks: list[EndCheck] = field(default_factory=list)

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def prepare(self, options: Any, plan: RunPlan) -> None:
        """Build the client, sampler and prompt factory for a run (on every process)."""
        self.close_client()
        workload = parse_workload(plan.workload, getattr(options, "workload", "workload"))
        target = plan.target
        if plan.key_kind == "emulator":
            api_key = EMULATOR_KEY  # a loadkit emulator: never the real key
        else:
            api_key = os.environ.get("ANTHROPIC_API_KEY") or ""
            if not api_key:
                raise WorkloadError(
                    "ANTHROPIC_API_KEY is not set (it is read from the environment only)"
                )
        seed = options.workload_seed or secrets.randbits(32)
        self.workload = workload
        self.client = StreamingClient(
            target,
            api_key,
            pool_size=None,
            timeout_s=options.request_timeout,
            http_stack=getattr(options, "http_stack", "lean"),
        )
        self.fallback_settings = fallback_settings(workload, options)
        self.policy = FallbackPolicy(self.client, self.fallback_settings)
        self.sampler = Sampler(workload, random.Random(seed))
        prefix = workload.system_prefix
        self.cache_ttl = prefix.ttl if prefix else "5m"
        self.prompts = PromptFactory(
            seed,
            system_prefix_tokens=prefix.tokens if prefix else 0,
            cache_prefix=bool(prefix and prefix.cache),
            cache_ttl=self.cache_ttl,
        )
        for mix in workload.models:
            self.prompts.calibrate(mix.model, self.client.count_tokens)
        self.datasets = None
        if workload.datasets:
            self.datasets = dataset_picker(workload, self.client, self.prompts, seed)
        self.client.warm_up()

    @property
    def dataset_names(self) -> list[str]:
        """The workload's dataset names in order (every process: from the run's plan)."""
        return dataset_names(self.plan.workload) if self.plan is not None else []

    @property
    def cached_prefix_tokens(self) -> int:
        prefix = self.workload.system_prefix if self.workload else None
        return prefix.tokens if prefix is not None and prefix.cache else 0

    def next_spec(self) -> RequestSpec:
        assert self.sampler is not None and self.prompts is not None and self.workload
        draw = self.sampler.draw()
        dataset = ""
        if self.datasets is not None:
            chosen = self.datasets.draw(draw.model)
            messages, system, target = chosen.messages, chosen.system, chosen.tokens
            dataset = chosen.dataset
        else:
            prefix = self.workload.system_prefix
            target = draw.prompt_tokens + (prefix.tokens if prefix else 0)
            messages, system = self.prompts.build(draw.model, target)
        if draw.output_target:
            messages = instruct(messages, draw.output_target)
        return RequestSpec(
            model=draw.model,
            speed=draw.speed,
            max_tokens=draw.max_tokens,
            messages=messages,
            system=system,
            temperature=self.workload.temperature,
            stop_sequences=self.workload.stop_sequences,
            scenario=self.workload.name,
            prompt_tokens_target=target,
            cache_ttl=self.cache_ttl,
            dataset=dataset,
            output_target=draw.output_target,
        )

    def close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
            self.policy = None

    def stop_emulator(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None


def dataset_picker(
    workload: Workload, client: StreamingClient, prompts: PromptFactory, seed: int
) -> DatasetPicker:
    """The workload's datasets, each distinct prompt counted once per model of the mix (on
    the real API count_tokens has its own requests-per-minute limit: 429s are waited out)."""
    models = sorted({m.model for m in workload.models if m.weight > 0})
    started = time.monotonic()

    def count(model: str, messages: list[dict[str, Any]], system: Any) -> int:
        return client.count_tokens(model, messages, system, retries=COUNT_RETRIES)

    picker = DatasetPicker(
        workload.datasets, models, count, prompts.system, random.Random(seed + 1)
    )
    log.info(
        "loadkit: datasets sized with %d count_tokens calls in %.1f s",
        picker.counted,
        time.monotonic() - started,
    )
    for mix in workload.models:
        largest = picker.largest(mix.model) + ((mix.max_tokens or workload.max_tokens).highest or 0)
        if largest > MAX_CONTEXT_TOKENS:
            raise WorkloadError(
                f"datasets: a prompt of {picker.largest(mix.model)} tokens with max_tokens "
                f"makes a request of {largest} tokens for {mix.model}; the largest context "
                f"window holds {MAX_CONTEXT_TOKENS}"
            )
    return picker


def run_of(environment: Any) -> Run:
    """The run of a Locust ``Environment`` (made on first use)."""
    run: Run | None = getattr(environment, "loadkit_run", None)
    if run is None:
        run = Run(environment=environment)
        environment.loadkit_run = run
    return run
