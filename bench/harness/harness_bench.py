"""Harness benchmark (issues 3 and 12): what one Locust process on one core costs, per user kind.

The emulator runs pinned to CPU 0; each step is one headless Locust process pinned to CPU 1
running one user kind:

- ``loadkit``: loadkit's ``LLMUser`` unchanged (``loadkit_user.py``),
- ``messages``: the shipped ``locustfiles/messages.py`` as users run it (its console stats
  included), measured from outside: its CPU from ``/proc/<pid>/stat``, its requests and
  events from the emulator's served log (requests that arrived in the window),
- ``naive``: the SDK's ``messages.stream()`` + ``text_stream``, the user people write first,
- ``raw``: a minimal raw-socket SSE reader, the floor (``raw_user.py``).

The emulator serves a fixed TTFT (no jitter, no rate limits, no capacity caps) and a fast
decode (many events per second per stream); replies are 200-400 tokens (uniform, so that the
closed-loop users do not move in lock-step), 1 token then 3 per ``content_block_delta``.

Default mode, **equal load**: every user kind runs at the same offered load. A closed-loop
user that keeps up drives the emulator's pace (TTFT, then one delta per 3 tokens at the decode
rate, ~168 events/s per user), so the same user count gives every kind the same events/s; the
load points are chosen so that no kind is CPU-bound there. The figures are CPU per event and
per request at that load, and the headline ratios are taken at fixed points: naive against
loadkit at ``NAIVE_LOAD`` events/s, raw and messages against loadkit at ``RAW_LOAD``.
``--quick`` measures those same points with shorter windows and one repeat; the full run adds
a higher load and repeats every point (the median is reported, with the spread).

``--capacity`` runs the older procedure (issue 3) instead; per kind:

1. **probe**: a few users; gives the events/s one user drives and the CPU it costs.
2. **ramp**: from 1.2x the users the probe extrapolates to one full core, x``--factor``
   per step until events/s stops growing (< 3%) or Locust uses a full core (``--full-core``);
   the best step is the capacity.
3. **50% / 90%**: users scaled to that share of the capacity; TTFT error against the
   emulator's ground truth (``/_emulator/served``, joined by ``request-id``):
   measured TTFT minus the emulator's actual TTFT (request arrival to first delta written).
4. **1-token replies** at the capacity's user count: the fixed CPU cost of a request; the
   marginal cost of an event follows from the difference with the capacity step.

Every figure comes from a measured window (``--window`` s after ``--warmup`` s) taken inside
the Locust process (``getrusage`` CPU time, completions by end time), or for ``messages`` by
the driver as above. "Foreign" is the share of a CPU that other processes took during the
window (L: CPU 1 minus Locust, E: CPU 0 minus the emulator; interrupts left out); a step where
either exceeds ``--noise-cpu`` is run once more and the quieter run kept. Events are
``content_block_delta`` events.

    .venv/bin/python bench/harness/harness_bench.py --out /tmp/harness.json
    .venv/bin/python bench/harness/harness_bench.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadkit.emulator.launcher import EmulatorProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KINDS = {
    "loadkit": "loadkit_user.py",
    "messages": "../../locustfiles/messages.py",
    "naive": "naive_user.py",
    "raw": "raw_user.py",
}
#: kinds measured from outside (no bench collector in their locustfile)
EXTERNAL = {"messages"}
STAGGER_S = 0.7  # benchcollect.stagger_s()
EMULATOR_CPU = 0
LOCUST_CPU = 1
MODEL = "claude-haiku-4-5"
LONG_REPLY: dict[str, Any] = {"kind": "uniform", "min": 200, "max": 400}
SHORT_REPLY: dict[str, Any] = {"kind": "fixed", "value": 1}
GOAL_VS_NAIVE = 5.0
GOAL_VS_RAW = 2.0
GOAL_TTFT_P99_MS = 2.0
#: equal-load mode: offered events/s of each point, and the points of the headline ratios
LOADS_FULL = (2500, 10000, 20000)
LOADS_QUICK = (2500, 10000)
NAIVE_LOAD = 2500  # the naive user is far from its core's limit here (~50% CPU)
RAW_LOAD = 10000
NAIVE_MAX_LOAD = 3000  # higher points would measure the naive user overloaded
GOAL_EQ_VS_NAIVE = 7.0  # loadkit's events/s per core >= this x the naive user's
GOAL_EQ_VS_RAW = 1.6  # loadkit's CPU per event <= this x the raw floor's
GOAL_EQ_SHIPPED = 1.10  # the shipped locustfile's CPU per event <= this x the bench user's


def emulator_config(ttft_ms: float, decode_tps: float, reply: dict[str, Any]) -> dict[str, Any]:
    unlimited = {
        "requests_per_minute": None,
        "input_tokens_per_minute": None,
        "output_tokens_per_minute": None,
    }
    return {
        "models": {
            MODEL: {
                "ttft_base_ms": ttft_ms,
                "prefill_tokens_per_s": 1e12,  # the prompt adds nothing to TTFT
                "decode_tokens_per_s": decode_tps,
                "ttft_jitter": 0.0,
                "decode_jitter": 0.0,
                "max_concurrent_streams": 100_000,
                "max_queue": 100_000,
            }
        },
        "rate_limits": {"haiku": unlimited},
        "fast_mode": {"input_tokens_per_minute": None, "output_tokens_per_minute": None},
        "acceleration_limit": {"enabled": False},  # the bench jumps to its full rate
        "output_tokens": reply,
        "tokens_per_delta": 3,
        "served_log_size": 1_000_000,
    }


def core_busy_s() -> dict[int, float]:
    """Busy seconds per CPU since boot (every process), from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    busy: dict[int, float] = {}
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(v) for v in values[:8]]
                # user + nice + system + steal; irq and softirq (loopback traffic) left out
                busy[int(name[3:])] = (ticks[0] + ticks[1] + ticks[2] + ticks[7]) / tick
    return busy


def cpu_ticks() -> dict[str, list[int]]:
    """Per-CPU /proc/stat counters: user nice system idle iowait irq softirq steal."""
    ticks: dict[str, list[int]] = {}
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks[name] = [int(v) for v in values[:8]]
    return ticks


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deltas_of(output_tokens: int, per_delta: int) -> int:
    """``content_block_delta`` events of a reply: 1 token first, then ``per_delta`` each."""
    return 0 if output_tokens <= 0 else 1 + math.ceil((output_tokens - 1) / per_delta)


def per_user_events_s(
    ttft_ms: float, decode_tps: float, reply: dict[str, Any], per_delta: int = 3
) -> float:
    """Events/s one closed-loop user drives when it keeps up with the emulator's pace."""
    if reply["kind"] == "fixed":
        replies = range(reply["value"], reply["value"] + 1)
    else:
        replies = range(reply["min"], reply["max"] + 1)
    deltas = sum(deltas_of(n, per_delta) for n in replies) / len(replies)
    seconds = ttft_ms / 1000 + (deltas - 1) * per_delta / decode_tps
    return deltas / seconds


def wait_quiet(max_wait_s: float, below: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) until both CPUs are nearly idle; the last busy share."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = core_busy_s()
        time.sleep(0.5)
        after = core_busy_s()
        busy = max((after[c] - before[c]) / 0.5 for c in (EMULATOR_CPU, LOCUST_CPU))
        if busy < below or time.monotonic() > deadline:
            return busy


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Step:
    kind: str
    label: str
    users: int
    ok: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    #: what CPU 1 and CPU 0 did in the window (s per /proc/stat column)
    locust_core_s: list[float] = field(default_factory=lambda: [0.0] * 8)
    emulator_core_s: list[float] = field(default_factory=lambda: [0.0] * 8)
    completed: int = 0
    failed: int = 0
    deltas: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft_error_ms: list[float] = field(default_factory=list)
    send_gap_ms: list[float] = field(default_factory=list)
    read_gap_ms: list[float] = field(default_factory=list)
    emulator_late_ms: list[float] = field(default_factory=list)
    emulator_cpu_s: float = 0.0
    unmatched: int = 0
    elapsed_s: float = 0.0
    busy_before: float = 0.0
    attempt: int = 1
    log: str = ""

    @property
    def util(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def emulator_util(self) -> float:
        return self.emulator_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def foreign(self) -> float:
        """Share of CPU 1 that other processes used during the window."""
        return self._others(self.locust_core_s, self.cpu_s)

    @property
    def foreign_emulator_cpu(self) -> float:
        """Share of CPU 0 that processes other than the emulator used during the window."""
        return self._others(self.emulator_core_s, self.emulator_cpu_s)

    @property
    def emulator_core_busy(self) -> float:
        """Share of CPU 0 busy for any reason (loopback softirq included) in the window."""
        t = self.emulator_core_s
        return (sum(t) - t[3] - t[4]) / self.wall_s if self.wall_s else 0.0

    def _others(self, t: list[float], ours: float) -> float:
        # user + nice + system + steal; irq and softirq (our own loopback traffic) left out
        busy = t[0] + t[1] + t[2] + t[7]
        return max(0.0, busy - ours) / self.wall_s if self.wall_s else 0.0

    @property
    def rps(self) -> float:
        return self.completed / self.wall_s if self.wall_s else 0.0

    @property
    def eps(self) -> float:
        return self.deltas / self.wall_s if self.wall_s else 0.0

    @property
    def us_per_event(self) -> float:
        return self.cpu_s / self.deltas * 1e6 if self.deltas else math.inf

    @property
    def us_per_request(self) -> float:
        return self.cpu_s / self.completed * 1e6 if self.completed else math.inf

    @property
    def deltas_per_request(self) -> float:
        return self.deltas / self.completed if self.completed else 0.0

    def line(self) -> str:
        err = f"{fmt(pct(self.ttft_error_ms, 0.5), 2)}/{fmt(pct(self.ttft_error_ms, 0.99), 2)}"
        return (
            f"{self.kind:>7} {self.label:<6} u={self.users:<4} {self.rps:7.1f} req/s "
            f"{self.eps:8.0f} ev/s cpu={self.util:4.0%} "
            f"emu={self.emulator_util:4.0%}/{self.emulator_core_busy:4.0%} "
            f"foreign={self.foreign:.2f}/{self.foreign_emulator_cpu:.2f} "
            f"{self.us_per_event:6.1f} us/ev ttft err p50/p99 {err} ms "
            f"emu late p99 {fmt(pct(self.emulator_late_ms, 0.99), 2)} ms "
            f"fail={self.failed} ({self.elapsed_s:.0f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            "users": self.users,
            "ok": self.ok,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cpu_util": self.util,
            "foreign_cores": self.foreign,
            "emulator_cpu_util": self.emulator_util,
            "emulator_core_busy": self.emulator_core_busy,
            "foreign_cores_emulator_cpu": self.foreign_emulator_cpu,
            "busy_before": self.busy_before,
            "attempt": self.attempt,
            "completed": self.completed,
            "failed": self.failed,
            "errors": self.errors,
            "requests_per_s": self.rps,
            "events_per_s": self.eps,
            "us_cpu_per_event": self.us_per_event,
            "us_cpu_per_request": self.us_per_request,
            "deltas_per_request": self.deltas_per_request,
            "ttft_error_ms": summary(self.ttft_error_ms),
            "send_gap_ms": summary(self.send_gap_ms),
            "read_gap_ms": summary(self.read_gap_ms),
            "emulator_first_token_lateness_ms": summary(self.emulator_late_ms),
            "unmatched": self.unmatched,
        }


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p90": pct(values, 0.9),
        "p99": pct(values, 0.99),
        "max": max(values) if values else None,
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isinf(value) else f"{value:.{digits}f}"


class Bench:
    def __init__(
        self, args: argparse.Namespace, emulator_url: str, emulator_pid: int, workdir: Path
    ) -> None:
        self.args = args
        self.url = emulator_url
        self.emulator_pid = emulator_pid
        self.workdir = workdir
        self.steps: list[Step] = []
        self.started = time.monotonic()

    def run(self, kind: str, users: int, label: str, window: float | None = None) -> Step:
        """One step; run again (once) if other processes took much CPU during it."""
        a = self.args
        window = window or a.window
        step = self._run_once(kind, users, label, window)
        noisy = max(step.foreign, step.foreign_emulator_cpu) > a.noise_cpu
        if noisy and a.retries > 0 and time.monotonic() - self.started < a.budget_s:
            print("    noisy (other processes on the CPUs): again", flush=True)
            again = self._run_once(kind, users, label, window)
            again.attempt = 2
            if max(again.foreign, again.foreign_emulator_cpu) < max(
                step.foreign, step.foreign_emulator_cpu
            ):
                step = again
        self.steps.append(step)
        return step

    def _run_once(self, kind: str, users: int, label: str, window: float) -> Step:
        a = self.args
        step = Step(kind, label, users)
        if time.monotonic() - self.started < a.budget_s:
            step.busy_before = wait_quiet(a.quiet_wait)
        started = time.monotonic()
        name = f"{len(self.steps):02d}-{kind}-{label}-{users}u-{int(started)}"
        out = self.workdir / f"{name}.json"
        log_path = self.workdir / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str((HERE / KINDS[kind]).resolve()),
            "--headless",
            "-u",
            str(users),
            "-r",
            # the bench users start at once and spread themselves over STAGGER_S; the shipped
            # locustfile is spread as a user would, by the spawn rate (no lock-step)
            f"{users / STAGGER_S:g}" if kind in EXTERNAL else str(max(users, 1)),
            "-t",
            f"{math.ceil(a.warmup + window + 30)}s",
            "-H",
            self.url,
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        if kind in EXTERNAL:  # as users run it: Locust's console stats every 2 s
            cmd.remove("--only-summary")
        if kind in ("loadkit", "messages"):
            cmd += [
                "--target-url",
                self.url,
                "--workload",
                str(HERE / "workload.yaml"),
                "--workload-seed",
                "1",
            ]
        env = dict(os.environ)
        env.update(
            HARNESS_BENCH_OUT=str(out),
            HARNESS_BENCH_WARMUP=str(a.warmup),
            HARNESS_BENCH_WINDOW=str(window),
            HARNESS_BENCH_EMULATOR_PID=str(self.emulator_pid),
            ANTHROPIC_API_KEY="harness-bench-key",  # the emulator accepts any key
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
        )
        data: dict[str, Any] = {}
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {LOCUST_CPU}),
            )
            if kind in EXTERNAL:
                data = self._measure_outside(proc, a.warmup, window)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)  # loadkit stops the run and writes its summary
            try:
                proc.wait(timeout=a.warmup + window + 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        step.log = str(log_path)
        if kind not in EXTERNAL:
            data = json.loads(out.read_text()) if out.exists() else {}
        if data.get("window_complete"):
            step.ok = True
            step.wall_s = data["wall_s"]
            step.cpu_s = data["cpu_s"]
            ticks = data["cpu_ticks_s"]
            step.locust_core_s = ticks.get(f"cpu{LOCUST_CPU}", [0.0] * 8)
            step.emulator_core_s = ticks.get(f"cpu{EMULATOR_CPU}", [0.0] * 8)
            step.completed = data["completed"]
            step.failed = data["failed"]
            step.deltas = data["deltas"]
            step.errors = data["errors"]
            step.emulator_cpu_s = data.get("emulator_cpu_s") or 0.0
            if kind not in EXTERNAL:
                self._ground_truth(step, data["sent"])
        time.sleep(0.3)  # connections closed by the exit reach the emulator
        http_json(self.url + "/_emulator/reset", {})
        step.elapsed_s = time.monotonic() - started
        print(("  " if step.ok else "  FAILED ") + step.line(), flush=True)
        if not step.ok:
            print(f"    log: {log_path}", flush=True)
        return step

    def _measure_outside(
        self, proc: subprocess.Popen[bytes], warmup: float, window: float
    ) -> dict[str, Any]:
        """The window of a locustfile without the bench collector, taken by this driver.

        It opens ``warmup`` s after the emulator saw the first request. Requests and events
        are those of the requests that arrived at the emulator in the window (in a steady
        state as many as end in it), read from the served log once they have ended.
        """
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if http_json(self.url + "/_emulator/stats")["totals"]["received"]:
                break
            time.sleep(0.1)
        time.sleep(warmup + STAGGER_S)  # the bench users' warm-up starts before their stagger
        if proc.poll() is not None:
            return {}
        t0, cpu0, ticks0 = time.perf_counter_ns(), process_cpu_s(proc.pid), cpu_ticks()
        emulator0 = process_cpu_s(self.emulator_pid)
        time.sleep(window)
        t1, cpu1, ticks1 = time.perf_counter_ns(), process_cpu_s(proc.pid), cpu_ticks()
        emulator1 = process_cpu_s(self.emulator_pid)
        if proc.poll() is not None:
            return {}
        # the window's last requests end before the run is interrupted, which would cut them
        a = self.args
        longest = a.reply.get("value") or a.reply["max"]
        time.sleep(a.ttft_ms / 1000 + longest / a.decode_tps + 0.5)
        served = http_json(self.url + "/_emulator/served")
        per_delta = int(http_json(self.url + "/_emulator/config")["tokens_per_delta"])
        done = [s for s in served if t0 <= s["arrived_ns"] < t1]
        ok = [s for s in done if s["outcome"] == "completed"]
        tick = os.sysconf("SC_CLK_TCK")
        return {
            "window_complete": True,
            "wall_s": (t1 - t0) / 1e9,
            "cpu_s": cpu1 - cpu0,
            "cpu_ticks_s": {
                cpu: [(b - a) / tick for a, b in zip(ticks0[cpu], ticks1[cpu], strict=True)]
                for cpu in ticks0
                if cpu in ticks1
            },
            "emulator_cpu_s": emulator1 - emulator0,
            "completed": len(ok),
            "failed": len(done) - len(ok),
            "deltas": sum(deltas_of(s["output_tokens"], per_delta) for s in ok),
            "errors": {},
        }

    def _ground_truth(self, step: Step, sent: list[list[Any]]) -> None:
        served = http_json(self.url + "/_emulator/served")
        truth = {s["request_id"]: s for s in served if s.get("actual_ttft_ms") is not None}
        for request_id, t_send, t_first, _deltas in sent:
            s = truth.get(request_id)
            if s is None:
                step.unmatched += 1
                continue
            step.ttft_error_ms.append((t_first - t_send) / 1e6 - s["actual_ttft_ms"])
            step.send_gap_ms.append((s["arrived_ns"] - t_send) / 1e6)
            step.read_gap_ms.append((t_first - s["first_token_ns"]) / 1e6)
            if s.get("first_token_lateness_ms") is not None:
                step.emulator_late_ms.append(s["first_token_lateness_ms"])

    def replies(self, distribution: dict[str, Any]) -> None:
        http_json(self.url + "/_emulator/config", {"output_tokens": distribution})

    def kind(self, kind: str) -> dict[str, Any]:
        a = self.args
        print(f"{kind}:", flush=True)
        probe = self.run(kind, a.probe_users, "probe")
        if not probe.ok or probe.eps <= 0:
            return {"kind": kind, "failed": True}
        per_user_eps = probe.eps / probe.users
        users = max(probe.users + 1, math.ceil(probe.users / max(probe.util, 0.01) * 1.2))
        best = probe
        for _ in range(a.max_ramp):
            step = self.run(kind, min(users, a.max_users), "ramp")
            grew = step.ok and step.eps >= best.eps * 1.03
            if step.ok and step.eps > best.eps:
                best = step
            # Past a full core, events/s still creeps up as reads batch several events, but
            # only because every stream is read late: that is overload, not capacity.
            full = step.util + step.foreign >= a.full_core  # others' share counts as taken
            if not grew or full or users >= a.max_users:
                break
            users = math.ceil(users * a.factor)
        capacity = best
        loads = {}
        for share in (0.5, 0.9):
            n = max(1, round(share * capacity.eps / per_user_eps))
            loads[share] = self.run(kind, n, f"{share:.0%}", a.load_window)
        self.replies(SHORT_REPLY)
        try:
            short = self.run(kind, capacity.users, "1-tok")
        finally:
            self.replies(a.reply)
        return {"kind": kind, "capacity": capacity, "loads": loads, "short": short}


def equal_load(
    bench: Bench, kinds: list[str], loads: tuple[int, ...]
) -> list[dict[int, dict[str, Step]]]:
    """Every kind at every offered load, ``--repeats`` times (each repeat a full pass)."""
    a = bench.args
    pace = per_user_events_s(a.ttft_ms, a.decode_tps, a.reply)
    repeats: list[dict[int, dict[str, Step]]] = []
    for rep in range(a.repeats):
        points: dict[int, dict[str, Step]] = {}
        for load in loads:
            users = max(1, round(load / pace))
            print(f"repeat {rep + 1}, {load} events/s offered ({users} users):", flush=True)
            points[load] = {
                kind: bench.run(kind, users, f"{load / 1000:g}k")
                for kind in kinds
                if kind != "naive" or load <= NAIVE_MAX_LOAD
            }
        repeats.append(points)
    return repeats


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def equal_ratios(points: dict[int, dict[str, Step]]) -> dict[str, float]:
    """The headline ratios of one repeat (CPU per event at the same offered load)."""

    def us(load: int, kind: str) -> float | None:
        step = points.get(load, {}).get(kind)
        return step.us_per_event if step is not None and step.ok and step.deltas else None

    out: dict[str, float] = {}
    ours_n, naive = us(NAIVE_LOAD, "loadkit"), us(NAIVE_LOAD, "naive")
    if ours_n and naive:
        out["loadkit/naive events/s per core"] = naive / ours_n
    ours, raw, shipped = us(RAW_LOAD, "loadkit"), us(RAW_LOAD, "raw"), us(RAW_LOAD, "messages")
    if ours and raw:
        out["loadkit/raw CPU per event"] = ours / raw
    if ours and shipped:
        out["messages.py/loadkit CPU per event"] = shipped / ours
    return out


EQ_GOALS = {
    "loadkit/naive events/s per core": (">=", GOAL_EQ_VS_NAIVE, NAIVE_LOAD),
    "loadkit/raw CPU per event": ("<=", GOAL_EQ_VS_RAW, RAW_LOAD),
    "messages.py/loadkit CPU per event": ("<=", GOAL_EQ_SHIPPED, RAW_LOAD),
}


def equal_table(repeats: list[dict[int, dict[str, Step]]]) -> str:
    """Medians over the repeats of each (load, kind); the range in brackets if repeated."""
    head = (
        "| offered events/s | user | users | events/s | req/s | CPU | foreign CPU L/E | "
        "µs CPU/event | µs CPU/request | events/s per core | CPU/event ÷ raw | ÷ loadkit | "
        "TTFT err p50 / p99 ms |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for load in repeats[0]:
        kinds = list(repeats[0][load])
        raw_us, loadkit_us = (
            [r[load][k].us_per_event for r in repeats if k in r[load] and r[load][k].ok]
            for k in ("raw", "loadkit")
        )
        for kind in kinds:
            steps = [r[load][kind] for r in repeats if kind in r[load] and r[load][kind].ok]
            if not steps:
                lines.append(f"| {load} | {kind} | failed |" + " |" * 10)
                continue
            us = [s.us_per_event for s in steps]
            spread = f" ({min(us):.1f}-{max(us):.1f})" if len(us) > 1 else ""
            mid = median(us)
            errors = [e for s in steps for e in s.ttft_error_ms]
            cells = [
                str(load),
                kind,
                str(steps[0].users),
                f"{median([s.eps for s in steps]):.0f}",
                f"{median([s.rps for s in steps]):.1f}",
                f"{median([s.util for s in steps]):.0%}",
                f"{max(s.foreign for s in steps):.2f} / "
                f"{max(s.foreign_emulator_cpu for s in steps):.2f}",
                f"{mid:.1f}{spread}",
                f"{median([s.us_per_request for s in steps]):.0f}",
                f"{1e6 / mid:.0f}",
                f"{mid / median(raw_us):.2f}" if raw_us else "-",
                f"{mid / median(loadkit_us):.2f}" if loadkit_us else "-",
                f"{fmt(pct(errors, 0.5), 2)} / {fmt(pct(errors, 0.99), 2)}" if errors else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def equal_goals(repeats: list[dict[int, dict[str, Step]]]) -> list[str]:
    per_repeat = [equal_ratios(points) for points in repeats]
    out = []
    for name, (sense, goal, load) in EQ_GOALS.items():
        values = [r[name] for r in per_repeat if name in r]
        if not values:
            continue
        mid = median(values)
        met = mid >= goal if sense == ">=" else mid <= goal
        spread = f" (repeats: {', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
        out.append(
            f"{name} at {load} events/s = {mid:.2f}x{spread} (goal {sense} {goal:g}x): "
            f"{'met' if met else 'MISSED'}"
        )
    return out


def marginal_us_per_event(capacity: Step, short: Step) -> float:
    extra = capacity.deltas_per_request - short.deltas_per_request
    if not short.ok or extra <= 0:
        return math.inf
    return (capacity.us_per_request - short.us_per_request) / extra


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        "| user | users at cap | max req/s | max events/s | CPU at cap | emulator CPU / core | "
        "foreign CPU L/E | "
        "events/s per core | µs CPU/event (all-in) | µs CPU/request (1-token) | "
        "µs CPU/extra event | TTFT err p50 / p99 ms @50% | TTFT err p50 / p99 ms @90% |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for kind, r in results.items():
        if r.get("failed"):
            lines.append(f"| {kind} | failed |" + " |" * 11)
            continue
        cap: Step = r["capacity"]
        short: Step = r["short"]
        cells = [
            kind,
            str(cap.users),
            f"{cap.rps:.0f}",
            f"{cap.eps:.0f}",
            f"{cap.util:.0%}",
            f"{cap.emulator_util:.0%} / {cap.emulator_core_busy:.0%}",
            f"{cap.foreign:.2f} / {cap.foreign_emulator_cpu:.2f}",
            f"{1e6 / cap.us_per_event:.0f}",
            f"{cap.us_per_event:.1f}",
            f"{short.us_per_request:.0f}",
            fmt(marginal_us_per_event(cap, short), 1),
        ]
        for share in (0.5, 0.9):
            s: Step = r["loads"][share]
            cells.append(
                f"{fmt(pct(s.ttft_error_ms, 0.5), 2)} / {fmt(pct(s.ttft_error_ms, 0.99), 2)} "
                f"({s.eps / cap.eps:.0%})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: dict[str, dict[str, Any]]) -> list[str]:
    def per_core(kind: str) -> float | None:
        r = results.get(kind)
        if not r or r.get("failed"):
            return None
        capacity: Step = r["capacity"]
        return 1e6 / capacity.us_per_event

    out = []
    ours, naive, raw = per_core("loadkit"), per_core("naive"), per_core("raw")
    if ours and naive:
        ratio = ours / naive
        verdict = "met" if ratio >= GOAL_VS_NAIVE else "MISSED"
        out.append(
            f"events/s per core, loadkit / naive = {ratio:.2f}x (goal >= {GOAL_VS_NAIVE:g}x): "
            f"{verdict}"
        )
    if ours and raw:
        ratio = raw / ours
        verdict = "met" if ratio <= GOAL_VS_RAW else "MISSED"
        out.append(
            f"events/s per core, raw / loadkit = {ratio:.2f}x (goal <= {GOAL_VS_RAW:g}x): {verdict}"
        )
    r = results.get("loadkit")
    if r and not r.get("failed"):
        p99 = pct(r["loads"][0.5].ttft_error_ms, 0.99)
        verdict = "met" if p99 is not None and p99 <= GOAL_TTFT_P99_MS else "MISSED"
        out.append(
            f"loadkit TTFT error p99 at 50% load = {fmt(p99, 2)} ms "
            f"(goal <= {GOAL_TTFT_P99_MS:g} ms): {verdict}"
        )
        floor: Step | None = (results.get("raw") or {}).get("at_loadkit_50")
        if floor is not None:
            errors = floor.ttft_error_ms
            half: Step = r["loads"][0.5]
            out.append(
                f"  floor at the same load (raw user, {floor.users} users, "
                f"{floor.eps:.0f} events/s): TTFT error p50 {fmt(pct(errors, 0.5), 2)} / "
                f"p99 {fmt(pct(errors, 0.99), 2)} ms; CPU per event there: raw "
                f"{floor.us_per_event:.1f} µs, loadkit {half.us_per_event:.1f} µs "
                f"({half.us_per_event / floor.us_per_event:.2f}x)"
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kinds", nargs="*", help=f"user kinds (default: {' '.join(KINDS)})")
    p.add_argument("--ttft-ms", type=float, default=100.0, help="emulator TTFT (fixed)")
    p.add_argument("--decode-tps", type=float, default=600.0, help="emulator decode tokens/s")
    p.add_argument("--warmup", type=float, default=2.5, help="seconds before each window")
    p.add_argument(
        "--window",
        type=float,
        help="measured seconds per step (default: 8; --quick 4; --capacity 6)",
    )
    p.add_argument(
        "--load-window",
        type=float,
        default=10.0,
        help="measured seconds of the 50%% and 90%% steps (more requests for the p99)",
    )
    p.add_argument("--probe-users", type=int, default=8)
    p.add_argument("--factor", type=float, default=1.5, help="users x this per ramp step")
    p.add_argument("--max-ramp", type=int, default=3, help="ramp steps at most")
    p.add_argument("--max-users", type=int, default=1500)
    p.add_argument(
        "--full-core", type=float, default=0.95, help="CPU share that counts as a full core"
    )
    p.add_argument(
        "--noise-cpu",
        type=float,
        default=0.25,
        help="a step during which other processes used more than this share of either CPU "
        "is run again (once)",
    )
    p.add_argument("--retries", type=int, default=1, choices=(0, 1))
    p.add_argument(
        "--quiet-wait", type=float, default=10.0, help="wait up to this for idle CPUs per step"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="after this many seconds, no more quiet waits or re-runs",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="equal load: the headline points only, shorter windows, one repeat",
    )
    p.add_argument("--capacity", action="store_true", help="the capacity procedure (ramp) instead")
    p.add_argument("--repeats", type=int, help="equal load: passes over every point")
    p.add_argument(
        "--loads",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        help="equal load: offered events/s, comma-separated (default: "
        f"{','.join(map(str, LOADS_FULL))}; --quick {','.join(map(str, LOADS_QUICK))})",
    )
    p.add_argument(
        "--reply-tokens",
        type=int,
        help="every reply this many tokens (default: 200-400, uniform)",
    )
    p.add_argument("--out", help="write every step as JSON here")
    args = p.parse_args(argv)
    default_kinds = [k for k in KINDS if not args.capacity or k not in EXTERNAL]
    args.kinds = args.kinds or default_kinds
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown user kinds: {', '.join(sorted(unknown))}")
    if args.capacity and set(args.kinds) & EXTERNAL:
        p.error("the capacity procedure runs the bench users only")
    args.loads = args.loads or (LOADS_QUICK if args.quick else LOADS_FULL)
    args.reply = {"kind": "fixed", "value": args.reply_tokens} if args.reply_tokens else LONG_REPLY
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.quick:
        args.warmup, args.load_window, args.max_ramp = 2.0, 4.0, 2
    if args.window is None:
        args.window = 4.0 if args.quick else 6.0 if args.capacity else 8.0
    return args


def reply_text(reply: dict[str, Any]) -> str:
    return str(reply["value"]) if reply["kind"] == "fixed" else f"{reply['min']}-{reply['max']}"


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if "model name" in ln), "")
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


def report_equal(
    args: argparse.Namespace,
    config: dict[str, Any],
    repeats: list[dict[int, dict[str, Step]]],
    steps: list[dict[str, Any]],
    elapsed: float,
) -> None:
    print()
    print(equal_table(repeats))
    print()
    for line in equal_goals(repeats):
        print(line)
    print(f"\n{machine()}; total {elapsed:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args),
                    "emulator_config": config,
                    "steps": steps,
                    "ratios_per_repeat": [equal_ratios(points) for points in repeats],
                    "table": equal_table(repeats),
                    "goals": equal_goals(repeats),
                    "elapsed_s": elapsed,
                },
                indent=1,
            ),
            encoding="utf-8",
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPUs (0 for the emulator, 1 for Locust)")
    os.sched_setaffinity(0, {EMULATOR_CPU})  # this driver mostly waits; keep CPU 1 for Locust
    started = time.monotonic()
    config = emulator_config(args.ttft_ms, args.decode_tps, args.reply)
    print(
        f"emulator on CPU {EMULATOR_CPU}: TTFT {args.ttft_ms:g} ms fixed, decode "
        f"{args.decode_tps:g} tok/s, replies {reply_text(args.reply)} tokens, 3 tokens/delta; "
        f"Locust on CPU {LOCUST_CPU}; windows {args.window:g} s after {args.warmup:g} s",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp,
        EmulatorProcess(config=config, seed=1, cpu=EMULATOR_CPU) as emulator,
    ):
        assert emulator.process is not None
        bench = Bench(args, emulator.base_url, emulator.process.pid, Path(tmp))
        if args.capacity:
            results = capacity_steps(bench, args)
        else:
            repeats = equal_load(bench, args.kinds, args.loads)
        steps = [s.as_dict() for s in bench.steps]
    elapsed = time.monotonic() - started
    if args.capacity:
        report_capacity(args, config, results, steps, elapsed)
    else:
        report_equal(args, config, repeats, steps, elapsed)


def capacity_steps(bench: Bench, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for kind in args.kinds:
        results[kind] = bench.kind(kind)
    ours, raw = results.get("loadkit"), results.get("raw")
    if ours and raw and not ours.get("failed") and not raw.get("failed"):
        # The TTFT error the machine and the emulator alone cause at loadkit's 50% load:
        # the floor user, same user count, hence the same request and event rates.
        print("raw at loadkit's 50% load:", flush=True)
        users = ours["loads"][0.5].users
        raw["at_loadkit_50"] = bench.run("raw", users, "lk-50%", args.load_window)
    return results


def report_capacity(
    args: argparse.Namespace,
    config: dict[str, Any],
    results: dict[str, dict[str, Any]],
    steps: list[dict[str, Any]],
    elapsed: float,
) -> None:
    print()
    print(table(results))
    print()
    for line in goals(results):
        print(line)
    print(f"\n{machine()}; total {elapsed:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args),
                    "emulator_config": config,
                    "steps": steps,
                    "table": table(results),
                    "goals": goals(results),
                    "elapsed_s": elapsed,
                },
                indent=1,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
