"""Measurement shared by the harness-benchmark locustfiles (imported by each of them).

Every user kind calls ``COLLECTOR.add(...)`` once per finished request, with the same
fields: request id, ``t_send`` / ``t_first`` / ``t_end`` (``time.perf_counter_ns``), the
number of ``content_block_delta`` events and whether it succeeded. The cost of that call (one
tuple appended to a list) is the same for every kind.

A greenlet started at ``test_start`` takes the process's CPU time (``getrusage``), the
emulator's (pid in ``HARNESS_BENCH_EMULATOR_PID``), every CPU's /proc/stat counters and the
clock after ``HARNESS_BENCH_WARMUP`` seconds and again ``HARNESS_BENCH_WINDOW`` seconds later;
at ``quitting`` the window's figures and the per-request rows sent inside it are written as
JSON to ``HARNESS_BENCH_OUT``. Nothing is written when that variable is unset, so the
locustfiles also run on their own. When it is set, the run is ended (``runner.quit``) as soon
as the window closes; Locust's ``-t`` is then only a safety bound.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust import events

OUT_ENV = "HARNESS_BENCH_OUT"
WARMUP_ENV = "HARNESS_BENCH_WARMUP"
WINDOW_ENV = "HARNESS_BENCH_WINDOW"
STAGGER_ENV = "HARNESS_BENCH_STAGGER"
EMULATOR_PID_ENV = "HARNESS_BENCH_EMULATOR_PID"  # its CPU time is taken with ours
#: Prompt of the naive and raw users (~50 tokens, like loadkit's bench workload).
PROMPT = (
    "Explain in plain words why the time to first token of a streamed reply matters to "
    "people who wait for it, and how a load test should measure it without adding its own "
    "delay; keep the answer short and concrete, with one example of a slow client."
)
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 4096

Row = tuple[str | None, int, int, int, int, bool]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_ticks() -> dict[str, list[int]]:
    """Per-CPU tick counters from /proc/stat: user nice system idle iowait irq softirq steal."""
    ticks: dict[str, list[int]] = {}
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks[name] = [int(v) for v in values[:8]]
    except OSError:
        pass
    return ticks


def _process_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stagger_s() -> float:
    """Users start spread over this many seconds so their requests are not in lock-step."""
    return float(os.environ.get(STAGGER_ENV, "0.7"))


@dataclass
class Collector:
    rows: list[Row] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=dict)
    written: bool = False
    emulator_pid: int = 0
    ticks0: dict[str, list[int]] = field(default_factory=dict)
    ticks1: dict[str, list[int]] = field(default_factory=dict)

    def add(
        self,
        request_id: str | None,
        t_send: int,
        t_first: int,
        t_end: int,
        deltas: int,
        ok: bool,
        error: str | None = None,
    ) -> None:
        self.rows.append((request_id, t_send, t_first, t_end, deltas, ok))
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1

    def _measure(self, warmup_s: float, window_s: float, runner: Any) -> None:
        gevent.sleep(warmup_s)
        self.window["t0_ns"] = time.perf_counter_ns()
        self.window["cpu0_s"] = _cpu_s()
        self.ticks0 = cpu_ticks()
        self.window["emulator0_s"] = _process_cpu_s(self.emulator_pid)
        gevent.sleep(window_s)
        self.window["t1_ns"] = time.perf_counter_ns()
        self.window["cpu1_s"] = _cpu_s()
        self.ticks1 = cpu_ticks()
        self.window["emulator1_s"] = _process_cpu_s(self.emulator_pid)
        if os.environ.get(OUT_ENV) and runner is not None:
            runner.quit()  # the run ends with the window (-t is only a safety bound)

    def start(self, runner: Any) -> None:
        # CPU-heavy imports leave gevent's cached clock behind (DESIGN.md section 6).
        gevent.get_hub().loop.update_now()
        self.emulator_pid = int(os.environ.get(EMULATOR_PID_ENV, "0"))
        warmup = float(os.environ.get(WARMUP_ENV, "3"))
        window = float(os.environ.get(WINDOW_ENV, "10"))
        gevent.spawn(self._measure, warmup, window, runner)

    def summary(self) -> dict[str, Any]:
        w = self.window
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "all_requests": len(self.rows),
            "errors": self.errors,
            "window_complete": "t1_ns" in w,
        }
        if "t1_ns" not in w:
            return out
        t0, t1 = int(w["t0_ns"]), int(w["t1_ns"])
        done = [r for r in self.rows if t0 <= r[3] < t1]
        sent = [r for r in self.rows if t0 <= r[1] < t1]
        out.update(
            wall_s=(t1 - t0) / 1e9,
            cpu_s=w["cpu1_s"] - w["cpu0_s"],
            # what every CPU did during the window, in seconds per /proc/stat column
            cpu_ticks_s={
                cpu: [
                    (b - a) / os.sysconf("SC_CLK_TCK") for a, b in zip(before, after, strict=True)
                ]
                for cpu, before in self.ticks0.items()
                if (after := self.ticks1.get(cpu)) is not None
            },
            emulator_cpu_s=w["emulator1_s"] - w["emulator0_s"] if self.emulator_pid else None,
            completed=sum(1 for r in done if r[5]),
            failed=sum(1 for r in done if not r[5]),
            deltas=sum(r[4] for r in done),
            # per request sent in the window: [request_id, t_send_ns, t_first_ns, deltas]
            sent=[[r[0], r[1], r[2], r[4]] for r in sent if r[5] and r[2]],
        )
        return out

    def write(self) -> None:
        path = os.environ.get(OUT_ENV)
        if not path or self.written:
            return
        self.written = True
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.summary(), fh)


COLLECTOR = Collector()


def finish_request(
    environment: Any,
    request_id: str | None,
    t_send: int,
    t_first: int,
    t_end: int,
    deltas: int,
    error: Exception | None,
    error_text: str | None = None,
) -> None:
    """Report a finished request to Locust and to the collector (both bench users)."""
    environment.events.request.fire(
        request_type="LLM",
        name=MODEL,
        response_time=(t_end - t_send) / 1e6,
        response_length=deltas,
        exception=error,
        context={"request_id": request_id},
    )
    if error is not None and error_text is None:
        error_text = type(error).__name__
    COLLECTOR.add(request_id, t_send, t_first, t_end, deltas, error is None, error_text)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    COLLECTOR.start(environment.runner)


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    COLLECTOR.write()
