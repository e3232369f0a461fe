"""Benchmark one SSE server process (the loadkit emulator or a candidate stack) on one core.

The server is pinned to CPU 0 and restarted for every step; ``bench/loadgen.py`` runs pinned
to CPU 1.  Three phases, each bounded in time:

1. **hold**  -- ramp concurrency (``--hold-levels``), one long, slow stream per connection
   (``--hold-tps`` tokens/s, i.e. one delta per second per stream at 3 tokens per delta).
   A level is held when every stream was open at the same time, all finished with 200
   and ``message_stop``, no connection failed, and first-token lateness p99 stayed under
   ``--max-p99-ms``.  The answer is the highest level held ("≥" when the last level held).
2. **rate**  -- open-loop stream starts at increasing offered event rates
   (``--stream-tokens`` tokens at ``--tps``); a step passes when the received event rate is
   >= 95% of offered, every stream in the window succeeded, and both first-token and
   end-of-stream (last delta) lateness p99 <= ``--max-p99-ms``.  Geometric ramp, then
   ``--bisect`` bisection steps.
3. **lateness** -- first-token lateness p50/p99 at 50% and 90% of the max sustained rate.

Targets: ``raw-uvloop``, ``raw-asyncio``, ``starlette``, ``aiohttp``, ``aiohttp-uvloop``
(``bench/candidates/``), ``emulator`` (``loadkit emulator`` with a generated config: fixed
TTFT, no jitter, no rate limits, no concurrency caps), or ``--server-cmd`` (a template with
``{port}``, ``{ttft_ms}``, ``{tps}``, ``{config}``).

    python bench/emulator_bench.py raw-uvloop starlette --out /tmp/bench.json
    python bench/emulator_bench.py emulator --quick

``--processes 1,2`` benches ``loadkit emulator --processes N`` for each N: N workers pinned to
CPUs 0..N-1 (the load generator then floats over both CPUs when N > 1), the rate and lateness
phases for each N, then every N > 1 again at 50% of N=1's capacity (equal offered load); it
ends with a table of events/s at capacity, the ratio to N=1, server CPU per event, and
first-token lateness at 50% of N=1's capacity.

    python bench/emulator_bench.py emulator --processes 1,2 --phases rate
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import cpu_busy_s, events_for, summary  # noqa: E402

LOADGEN = HERE / "loadgen.py"
TIMER_FLOOR = HERE / "timer_floor.py"
CAND = HERE / "candidates"
SERVER_CPU = 0
LOADGEN_CPU = 1
MODEL = "claude-opus-4-6"

CANDIDATES: dict[str, list[str]] = {
    "starlette": [str(CAND / "starlette_uvicorn.py"), "--loop", "uvloop"],
    "starlette-asyncio": [str(CAND / "starlette_uvicorn.py"), "--loop", "asyncio"],
    "aiohttp": [str(CAND / "aiohttp_server.py"), "--loop", "asyncio"],
    "aiohttp-uvloop": [str(CAND / "aiohttp_server.py"), "--loop", "uvloop"],
    "raw-asyncio": [str(CAND / "raw_protocol.py"), "--loop", "asyncio"],
    "raw-uvloop": [str(CAND / "raw_protocol.py"), "--loop", "uvloop"],
    "raw-uvloop-gc": [str(CAND / "raw_protocol.py"), "--loop", "uvloop", "--gc", "tuned"],
}


def emulator_config(
    ttft_ms: float, tps: float, n_tokens: int, served_log_size: int = 0
) -> dict[str, Any]:
    """A config for ``loadkit emulator`` whose schedule matches the candidates' fixed shape
    (the served log off unless ``served_log_size``)."""
    return {
        "models": {
            MODEL: {
                "ttft_base_ms": ttft_ms,
                "prefill_tokens_per_s": 1e9,
                "decode_tokens_per_s": tps,
                "ttft_jitter": 0.0,
                "decode_jitter": 0.0,
                "max_concurrent_streams": 1_000_000,
                "max_queue": 1_000_000,
            }
        },
        "rate_limits": {
            "opus": {
                "requests_per_minute": None,
                "input_tokens_per_minute": None,
                "output_tokens_per_minute": None,
            }
        },
        "acceleration_limit": {"enabled": False},  # a capacity bench jumps to full rate
        "output_tokens": {"kind": "fixed", "value": n_tokens},
        "tokens_per_delta": 3,
        "served_log_size": served_log_size,
    }


def emulator_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("loadkit")
    if exe.exists():
        return [str(exe), "emulator"]
    found = shutil.which("loadkit")
    return [found, "emulator"] if found else [sys.executable, "-m", "loadkit", "emulator"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_preexec(cpus: set[int]) -> Callable[[], None]:
    def preexec() -> None:
        os.sched_setaffinity(0, cpus)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        os.setsid()

    return preexec


@dataclass
class Target:
    name: str
    server_cmd: str | None = None  # template for --server-cmd
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emubench-")))
    processes: int = 1  # loadkit emulator --processes
    loadgens: int = 1  # load generator processes in the rate phase, each a share of the rate
    server_cpus: list[int] | None = None  # instead of CPUs 0..N-1

    @property
    def label(self) -> str:
        return f"{self.name} --processes {self.processes}" if self.processes > 1 else self.name

    @property
    def cpus(self) -> set[int]:
        """Where the server runs: CPU 0, or CPUs 0..N-1 for N processes (or --server-cpus)."""
        if self.server_cpus:
            return set(self.server_cpus)
        return set(range(SERVER_CPU, SERVER_CPU + self.processes))

    @property
    def loadgen_cpus(self) -> list[int]:
        """Each load generator's CPU: the ones after the server's (CPU 1 for one server
        process), or -1 (the scheduler's choice) for all when the machine has too few."""
        first = max(self.cpus) + 1
        if first + self.loadgens <= (os.cpu_count() or 1):
            return list(range(first, first + self.loadgens))
        return [-1] * self.loadgens

    @property
    def loadgen_cpu(self) -> int:
        return self.loadgen_cpus[0]

    def command(
        self, port: int, ttft_ms: float, tps: float, n_tokens: int, served_log_size: int = 0
    ) -> list[str]:
        cfg = self.tmp / "emulator.yaml"
        if self.name == "emulator" or self.server_cmd:
            config = emulator_config(ttft_ms, tps, n_tokens, served_log_size)
            cfg.write_text(yaml.safe_dump(config))
        if self.server_cmd:
            return shlex.split(
                self.server_cmd.format(port=port, ttft_ms=ttft_ms, tps=tps, config=cfg)
            )
        if self.name == "emulator":
            return [
                *emulator_cmd(),
                "--host", "127.0.0.1", "--port", str(port), "--config", str(cfg), "--seed", "1",
                *(["--processes", str(self.processes)] if self.processes > 1 else []),
            ]  # fmt: skip
        return [
            sys.executable, *CANDIDATES[self.name],
            "--port", str(port), "--ttft-ms", str(ttft_ms), "--tps", str(tps),
        ]  # fmt: skip


@contextlib.contextmanager
def server(
    target: Target, ttft_ms: float, tps: float, n_tokens: int, served_log_size: int = 0
) -> Iterator[tuple[int, str]]:
    """Start the target pinned to its CPUs; yield ``(port, pids)``, the pids of the processes
    that serve (``a,b`` for a --processes emulator's workers); stop it."""
    port = free_port()
    cmd = target.command(port, ttft_ms, tps, n_tokens, served_log_size)
    log = (target.tmp / "server.log").open("ab")
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        preexec_fn=_server_preexec(target.cpus),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {shlex.join(cmd)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not listening after 30 s: {shlex.join(cmd)}") from None
                time.sleep(0.1)
        time.sleep(0.3)
        pids = str(proc.pid)
        if target.processes > 1:
            workers = (server_stats(port) or {}).get("processes") or []
            if len(workers) != target.processes:
                raise RuntimeError(f"expected {target.processes} workers, stats say {workers}")
            pids = ",".join(str(w["pid"]) for w in workers)
        yield port, pids
        if proc.poll() is not None:
            raise RuntimeError(f"server died during the step (exit {proc.returncode})")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def server_stats(port: int) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats", timeout=2) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def loadgen(
    port: int, pids: str, hard_timeout: float, cpu: int = LOADGEN_CPU, **kw: Any
) -> dict[str, Any]:
    args = [sys.executable, str(LOADGEN), "--port", str(port), "--server-pid", pids]
    args += ["--cpu", str(cpu), "--hard-timeout", str(hard_timeout)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=hard_timeout + 30)
    if res.returncode != 0:
        raise RuntimeError(f"loadgen failed ({res.returncode}): {res.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(res.stdout)
    out["loadgen_args"] = shlex.join(args[1:])
    return out


def loadgens(
    port: int, pids: str, hard_timeout: float, cpus: list[int], **kw: Any
) -> dict[str, Any]:
    """``loadgen`` in as many processes as ``cpus``, each offered ``rate / len(cpus)``, run at
    once; one result: counts and CPU summed, first-token lateness percentiles over every
    stream (from each one's ``--dump``), the worst of their other percentiles."""
    if len(cpus) == 1:
        return loadgen(port, pids, hard_timeout, cpu=cpus[0], **kw)
    kw["rate"] = f"{float(kw['rate']) / len(cpus):.3f}"
    tmp = Path(tempfile.mkdtemp(prefix="emubench-lg-"))
    procs = []
    for i, cpu in enumerate(cpus):
        args = [sys.executable, str(LOADGEN), "--port", str(port), "--server-pid", pids]
        args += ["--cpu", str(cpu), "--hard-timeout", str(hard_timeout)]
        args += ["--dump", str(tmp / f"{i}.txt")]
        for k, v in kw.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=hard_timeout + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {stderr[-2000:]!r}")
        outs.append(json.loads(stdout))
    late = [
        float(line.split()[1])
        for i in range(len(cpus))
        for line in (tmp / f"{i}.txt").read_text().splitlines()
    ]
    shutil.rmtree(tmp, ignore_errors=True)
    merged = dict(outs[0])
    for key in (
        "events_per_s", "offered_events_per_s", "streams_in_window_completed",
        "streams_good_in_window", "still_active_at_end", "connections", "loadgen_cpu_frac",
        "peak_active_streams", "incomplete_streams",
    ):  # fmt: skip
        merged[key] = round(sum(o.get(key) or 0 for o in outs), 3)
    for key in ("errors", "connect_errors", "statuses"):
        counts: dict[str, int] = {}
        for o in outs:
            for name, n in o.get(key, {}).items():
                counts[name] = counts.get(name, 0) + n
        merged[key] = counts
    for key in ("end_lateness_ms", "send_lag_ms", "loadgen_loop_lag_ms"):
        merged[key] = max((o[key] for o in outs), key=lambda x: x.get("p99") or 0.0)
    merged["first_token_lateness_ms"] = summary(late)
    merged["server_cpu_frac"] = max(o.get("server_cpu_frac") or 0.0 for o in outs)
    merged["loadgens"] = len(cpus)
    merged["loadgen_args"] = " | ".join(o["loadgen_args"] for o in outs if "loadgen_args" in o)
    return merged


def p99(r: dict[str, Any], key: str = "first_token_lateness_ms") -> float:
    v = r.get(key, {}).get("p99")
    return math.inf if v is None else float(v)


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or math.isinf(v) else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------
# phases


def foreign_cpu(r: dict[str, Any], t: Target | None = None) -> float:
    """CPU used by other processes on the benchmark's CPUs during the window (cores). When
    the load generator has no CPU of its own, only the sum over every CPU is known."""
    t = t or Target("?")
    busy: dict[str, float] = r.get("cpu_busy_frac", {})
    server, gen = float(r.get("server_cpu_frac") or 0.0), float(r.get("loadgen_cpu_frac", 0.0))
    gen_cpus = t.loadgen_cpus
    if min(gen_cpus) < 0:
        every = sum(v for k, v in busy.items() if k[3:].isdigit())
        return round(max(every - server - gen, 0.0), 3)
    on_server = sum(busy.get(f"cpu{c}", 0.0) for c in t.cpus)
    on_gen = sum(busy.get(f"cpu{c}", 0.0) for c in gen_cpus)
    return round(max(on_server - server, on_gen - gen, 0.0), 3)


def wait_quiet(a: argparse.Namespace, t: Target | None = None) -> float:
    """Wait (up to --quiet-wait s) until the benchmark's CPUs are nearly idle; return the last
    busy max."""
    deadline = time.monotonic() + a.quiet_wait
    t = t or Target("?")
    used = {c for c in (*t.cpus, *t.loadgen_cpus) if c >= 0} | {SERVER_CPU, LOADGEN_CPU}
    if min(t.loadgen_cpus) < 0:
        used = set(range(os.cpu_count() or 1))
    cpus = tuple(f"cpu{c}" for c in sorted(used))
    while True:
        b0 = cpu_busy_s()
        time.sleep(0.5)
        b1 = cpu_busy_s()
        busy = max((b1.get(c, 0.0) - b0.get(c, 0.0)) / 0.5 for c in cpus)
        if busy < a.quiet_below or time.monotonic() > deadline:
            return round(busy, 3)


def attempt(
    a: argparse.Namespace, label: str, fn: Callable[[], dict[str, Any]], t: Target | None = None
) -> dict[str, Any]:
    """Run a step; re-run a failed step when other processes took CPU during it."""
    r: dict[str, Any] = {}
    for i in range(a.retries + 1):
        busy_before = wait_quiet(a, t)
        r = fn()
        r["busy_before"] = busy_before
        r["foreign_cpu"] = foreign_cpu(r, t)
        r["attempt"] = i + 1
        print(f"  {label}: {r['line']} foreign_cpu={r['foreign_cpu']}", flush=True)
        if r["ok"] or r["foreign_cpu"] < a.noise_cpu:
            break
    return r


def hold_step(t: Target, a: argparse.Namespace, conns: int) -> dict[str, Any]:
    return attempt(a, f"hold {conns:>6}", lambda: _hold_once(t, a, conns), t)


def _hold_once(t: Target, a: argparse.Namespace, conns: int) -> dict[str, Any]:
    ramp_s = conns / a.ramp_rate
    n = 1 + math.ceil((ramp_s + a.hold_s) * a.hold_tps)
    with server(t, a.ttft_ms, a.hold_tps, n) as (port, pids):
        r = loadgen(
            port, pids, hard_timeout=ramp_s + a.hold_s + 30, cpu=t.loadgen_cpu, mode="hold",
            connections=conns,
            ramp_rate=a.ramp_rate, max_tokens=n, expect_tps=a.hold_tps,
            expect_ttft_ms=a.ttft_ms, drain=5,
        )  # fmt: skip
        r["server_stats"] = server_stats(port)
    why = []
    if r["peak_active_streams"] < conns:
        why.append(f"peak {r['peak_active_streams']}<{conns}")
    if r["statuses"].get("200", 0) < conns:
        why.append(f"200s {r['statuses']}")
    if r["errors"] or r["connect_errors"]:
        why.append(f"errors {r['errors']} {r['connect_errors']}")
    if r["incomplete_streams"] or r["still_active_at_end"]:
        why.append(f"incomplete {r['incomplete_streams']}+{r['still_active_at_end']}")
    if p99(r) > a.max_p99_ms:
        why.append(f"lateness p99 {p99(r):.1f} ms")
    if p99(r, "end_lateness_ms") > a.max_p99_ms:
        why.append(f"end-of-stream lateness p99 {p99(r, 'end_lateness_ms'):.1f} ms")
    r["ok"] = r["held"] = not why
    r["why"] = "; ".join(why)
    mem = r.get("server_mem_mb", {}).get("VmHWM")
    r["line"] = (
        f"{'held' if not why else 'FAILED'} peak={r['peak_active_streams']} "
        f"ft_p99={fmt(p99(r))}ms end_p99={fmt(p99(r, 'end_lateness_ms'))}ms "
        f"srv_cpu={r.get('server_cpu_frac')} lg_cpu={r['loadgen_cpu_frac']} "
        f"lg_lag_max={fmt(r['loadgen_loop_lag_ms']['max'])}ms srv_hwm={fmt(mem)}MB {r['why']}"
    )
    return r


def rate_step(
    t: Target, a: argparse.Namespace, events_s: float, measure_s: float
) -> dict[str, Any]:
    r = attempt(
        a,
        f"rate {events_s:>9.0f} ev/s",
        lambda: _rate_once(t, a, events_s, measure_s),
        t,
    )
    r["target_events_per_s"] = events_s
    return r


def _rate_once(
    t: Target, a: argparse.Namespace, events_s: float, measure_s: float
) -> dict[str, Any]:
    eps = events_for(a.stream_tokens)
    rate = events_s / eps
    with server(t, a.ttft_ms, a.tps, a.stream_tokens) as (port, pids):
        r = loadgens(
            port, pids, hard_timeout=a.warmup + measure_s + 40, cpus=t.loadgen_cpus,
            mode="open", rate=f"{rate:.3f}",
            max_tokens=a.stream_tokens, expect_tps=a.tps, expect_ttft_ms=a.ttft_ms,
            warmup=a.warmup, duration=measure_s, drain=4,
        )  # fmt: skip
        r["server_stats"] = server_stats(port)
    why = []
    ratio = r["events_per_s"] / r["offered_events_per_s"]
    if ratio < 0.95:
        why.append(f"received {ratio:.0%} of offered")
    bad = r["streams_in_window_completed"] - r["streams_good_in_window"]
    if bad or r["errors"] or r["connect_errors"] or r["still_active_at_end"]:
        why.append(f"{bad} bad streams {r['errors']} {r['connect_errors']}")
    if p99(r) > a.max_p99_ms:
        why.append(f"lateness p99 {p99(r):.1f} ms")
    if p99(r, "end_lateness_ms") > a.max_p99_ms:
        why.append(f"end-of-stream lateness p99 {p99(r, 'end_lateness_ms'):.1f} ms")
    lag = p99(r, "send_lag_ms")
    if lag > 10:
        why.append(f"loadgen behind schedule (send lag p99 {lag:.1f} ms)")
    r["ok"] = r["passed"] = not why
    r["why"] = "; ".join(why)
    lat = r["first_token_lateness_ms"]
    r["line"] = (
        f"{'ok' if not why else 'FAIL'} "
        f"got={r['events_per_s']:.0f} ft_p50={fmt(lat['p50'], 2)} ft_p99={fmt(lat['p99'], 2)}ms "
        f"end_p99={fmt(p99(r, 'end_lateness_ms'), 2)}ms conns={r.get('connections')} "
        f"srv_cpu={r.get('server_cpu_frac')} lg_cpu={r['loadgen_cpu_frac']}"
    )
    srv = (r.get("server_stats") or {}).get("first_token_lateness_ms")
    if isinstance(srv, dict) and srv.get("p99") is not None:
        r["line"] += f" server-side ft_p50/p99={fmt(srv.get('p50'), 2)}/{fmt(srv['p99'], 2)}ms"
    r["line"] += f" {r['why']}"
    return r


def bench_target(t: Target, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "target": t.label,
        "processes": t.processes,
        "command": shlex.join(t.command(0, a.ttft_ms, a.tps, 1)),
    }
    print(f"== {t.label}: {res['command']}", flush=True)
    t0 = time.monotonic()

    # 1. concurrency held
    holds: list[dict[str, Any]] = []
    max_held = 0
    if "hold" in a.phases:
        for level in a.hold_levels:
            r = hold_step(t, a, level)
            holds.append(r)
            if not r["held"]:
                break
            max_held = level
    res["hold"] = holds
    res["max_held"] = max_held
    res["hold_capped"] = bool(holds) and holds[-1]["held"]

    # 2. max sustained event rate
    steps: list[dict[str, Any]] = []
    best, first_fail = 0.0, 0.0
    ev = a.rate_start
    t_rate = time.monotonic()
    while "rate" in a.phases and ev <= a.rate_cap and time.monotonic() - t_rate < a.budget_s:
        r = rate_step(t, a, ev, a.duration)
        steps.append(r)
        if not r["passed"]:
            first_fail = ev
            break
        best = ev
        ev *= a.rate_factor
    for _ in range(a.bisect if first_fail else 0):
        if time.monotonic() - t_rate > a.budget_s:
            break
        mid = (best + first_fail) / 2 if best else first_fail / 2
        r = rate_step(t, a, mid, a.duration)
        steps.append(r)
        if r["passed"]:
            best = mid
        else:
            first_fail = mid
    res["rate_steps"] = steps
    res["max_events_per_s"] = best
    res["rate_capped"] = not first_fail
    # the received rate at the best passing step
    best_steps = [s for s in steps if s["passed"] and s["target_events_per_s"] == best]
    res["max_events_per_s_received"] = best_steps[0]["events_per_s"] if best_steps else None

    # 3. lateness at 50% / 90%
    res["lateness"] = {}
    if best:
        for frac in (0.5, 0.9):
            r = rate_step(t, a, best * frac, a.lateness_duration)
            res["lateness"][str(frac)] = r
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


# --------------------------------------------------------------------------------------------
# churn: many short requests, each with a new body, beside the machine's timer-noise floor


def _post(port: int, path: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass


def floor_probe(cpu: int, warmup: float, duration: float) -> subprocess.Popen[str]:
    """``bench/timer_floor.py`` on ``cpu``: an idle uvloop loop timing its own timers."""
    args = [sys.executable, str(TIMER_FLOOR), "--cpu", str(cpu)]
    args += ["--warmup", f"{warmup:.3f}", "--duration", f"{duration:.3f}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _churn_once(t: Target, a: argparse.Namespace, users: int, duration: float) -> dict[str, Any]:
    """One closed-loop churn step: ``users`` connections, each sending requests back to back,
    every one with a new body; the emulator's served log on (its default size). Beside it, on
    the server's first CPU, the floor probe; the emulator's stats are reset when the measured
    window opens and read when it closes, under load."""
    n = a.churn_tokens
    # The users start spread over one request's time: a request takes as long every time
    # (no jitter), so users started together would stay in step, arriving in bursts.
    request_s = a.ttft_ms / 1000.0 + (n - 1) / a.tps
    ramp = users / request_s
    warmup = max(a.warmup, 2 * request_s)
    cpu = min(t.cpus)
    with server(t, a.ttft_ms, a.tps, n, served_log_size=a.churn_served_log) as (port, pids):
        gen_args = [sys.executable, str(LOADGEN), "--port", str(port), "--server-pid", pids]
        gen_args += ["--cpu", str(t.loadgen_cpu), "--hard-timeout", str(warmup + duration + 40)]
        gen_args += [
            "--mode", "closed", "--connections", str(users), "--ramp-rate", f"{ramp:.1f}",
            "--new-bodies", "--max-tokens", str(n), "--expect-tps", str(a.tps),
            "--expect-ttft-ms", str(a.ttft_ms), "--warmup", str(warmup),
            "--duration", str(duration), "--drain", "5",
        ]  # fmt: skip
        t0 = time.monotonic()
        gen = subprocess.Popen(gen_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        floor = floor_probe(cpu, warmup, duration)
        time.sleep(max(0.0, t0 + warmup - time.monotonic()))
        _post(port, "/_emulator/reset")
        time.sleep(max(0.0, t0 + warmup + duration - time.monotonic()))
        stats = server_stats(port) or {}
        out, err = gen.communicate(timeout=warmup + duration + 70)
        if gen.returncode != 0:
            raise RuntimeError(f"loadgen failed ({gen.returncode}): {err[-2000:]}")
        f_out, f_err = floor.communicate(timeout=60)
        if floor.returncode != 0:
            raise RuntimeError(f"floor probe failed ({floor.returncode}): {f_err[-2000:]}")
    r: dict[str, Any] = json.loads(out)
    r["users"] = users
    r["floor_ms"] = json.loads(f_out)
    r["server_stats"] = stats
    r["requests_per_s"] = round(r["streams_in_window_completed"] / r["window_s"], 1)
    srv = stats.get("first_token_lateness_ms") or {}
    lag = (stats.get("event_loop_lag_ms") or {}).get("recent") or {}
    floor_p99 = r["floor_ms"].get("p99")
    r["server_ft_ms"] = srv
    r["loop_lag_ms"] = lag
    r["excess_p99_ms"] = (
        srv["p99"] - floor_p99 if srv.get("p99") is not None and floor_p99 is not None else None
    )
    bad = r["streams_in_window_completed"] - r["streams_good_in_window"]
    why = []
    if bad or r["errors"] or r["connect_errors"]:
        why.append(f"{bad} bad streams {r['errors']} {r['connect_errors']}")
    if not srv.get("count"):
        why.append("no server-side lateness (not a loadkit emulator?)")
    r["ok"] = not why
    r["why"] = "; ".join(why)
    r["line"] = (
        f"{'ok' if not why else 'FAIL'} users={users} req/s={r['requests_per_s']:.0f} "
        f"srv_cpu={r.get('server_cpu_frac')} server ft p50/p99/max="
        f"{fmt(srv.get('p50'), 2)}/{fmt(srv.get('p99'), 2)}/{fmt(srv.get('max'), 1)}ms "
        f"floor p50/p99/max={fmt(r['floor_ms'].get('p50'), 2)}/{fmt(floor_p99, 2)}/"
        f"{fmt(r['floor_ms'].get('max'), 1)}ms loop lag p99={fmt(lag.get('p99'), 2)} "
        f"(own {fmt(lag.get('own_p99'), 2)}, floor's own {fmt(r['floor_ms'].get('own_p99'), 2)})ms "
        f"{r['why']}"
    )
    return r


def bench_churn(t: Target, a: argparse.Namespace) -> dict[str, Any]:
    """Churn mode: find the users that load the emulator to ``--churn-cpu`` of a core (a
    short step at ``--churn-users``, scaled by its CPU, twice), then ``--churn-runs`` steps
    there."""
    users = a.churn_users
    res: dict[str, Any] = {"target": t.label, "calibration": [], "runs": []}
    for _ in range(2 if a.churn_cpu > 0 else 0):  # CPU is not quite proportional: twice
        r = _churn_once(t, a, users, 3.0)
        print(f"  churn calibrate: {r['line']}", flush=True)
        res["calibration"].append(r)
        cpu = float(r.get("server_cpu_frac") or 0.0)
        if cpu > 0:
            users = max(10, min(a.churn_max_users, round(users * a.churn_cpu / cpu)))
    res["users"] = users
    for i in range(a.churn_runs):
        r = attempt(
            a, f"churn run {i + 1} {users} users", lambda: _churn_once(t, a, users, a.churn_s), t
        )
        res["runs"].append(r)
    return res


def churn_table(results: list[dict[str, Any]], noise_cpu: float = 0.1) -> str:
    """One row per churn run: the emulator's first-token lateness (its own ground truth,
    server-side) beside the floor (an idle loop on the same core in the same run)."""
    head = (
        "| target | run | users | requests/s | server CPU | emulator ft lateness "
        "p50 / p99 / max (ms) | floor p50 / p99 / max (ms) | p99 - floor p99 (ms) | "
        "loop lag p99 / own p99, emulator (ms) | same, floor (ms) | "
        "client-side ft p50 / p99 (ms) |"
    )
    lines = [head, "|" + "---|" * 11]
    for res in results:
        for i, r in enumerate(res.get("runs", []), 1):
            srv, fl, lag = r["server_ft_ms"], r["floor_ms"], r["loop_lag_ms"]
            cl = r["first_token_lateness_ms"]
            noisy = " †" if r.get("foreign_cpu", 0.0) >= noise_cpu else ""
            lines.append(
                f"| {res['target']} | {i}{noisy} | {r['users']} | {r['requests_per_s']:,.0f} | "
                f"{fmt(r.get('server_cpu_frac'), 2)} | "
                f"{fmt(srv.get('p50'), 2)} / {fmt(srv.get('p99'), 2)} / {fmt(srv.get('max'), 1)} | "
                f"{fmt(fl.get('p50'), 2)} / {fmt(fl.get('p99'), 2)} / {fmt(fl.get('max'), 1)} | "
                f"{fmt(r.get('excess_p99_ms'), 2)} | "
                f"{fmt(lag.get('p99'), 2)} / {fmt(lag.get('own_p99'), 2)} | "
                f"{fmt(fl.get('p99'), 2)} / {fmt(fl.get('own_p99'), 2)} | "
                f"{fmt(cl.get('p50'), 2)} / {fmt(cl.get('p99'), 2)} |"
            )
    return "\n".join(lines)


def table(results: list[dict[str, Any]], noise_cpu: float = 0.1) -> str:
    """Markdown table; † marks a figure taken while other processes used >= noise_cpu."""
    head = (
        "| target | max concurrent streams held | max events/s | "
        "first-token lateness p50 / p99 @50% (ms) | @90% (ms) | "
        "server CPU @max | loadgen CPU @max |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in results:
        held = f"{'≥ ' if r.get('hold_capped') else ''}{r.get('max_held', 0):,}"
        if not r.get("hold"):
            held = "-"
        elif not r.get("max_held"):
            held = f"< {r['hold'][0]['connections']:,}"
        ev = f"{'≥ ' if r.get('rate_capped') else ''}{r.get('max_events_per_s', 0):,.0f}"
        cells = []
        for frac in ("0.5", "0.9"):
            x = r.get("lateness", {}).get(frac)
            if x:
                lat = x["first_token_lateness_ms"]
                noisy = " †" if x.get("foreign_cpu", 0.0) >= noise_cpu else ""
                cells.append(f"{fmt(lat['p50'], 2)} / {fmt(lat['p99'], 2)}{noisy}")
            else:
                cells.append("-")
        best = [s for s in r.get("rate_steps", []) if s.get("passed")]
        top = max(best, key=lambda s: s["target_events_per_s"]) if best else {}
        lines.append(
            f"| {r['target']} | {held} | {ev} | {cells[0]} | {cells[1]} | "
            f"{fmt(top.get('server_cpu_frac'), 2)} | {fmt(top.get('loadgen_cpu_frac'), 2)} |"
        )
    return "\n".join(lines)


def _per_event_us(r: dict[str, Any] | None) -> str:
    if not r or not r.get("server_cpu_frac") or not r.get("events_per_s"):
        return "-"
    return f"{r['server_cpu_frac'] / r['events_per_s'] * 1e6:.1f}"


def _lateness(r: dict[str, Any] | None, noise_cpu: float) -> str:
    if not r:
        return "-"
    lat = r["first_token_lateness_ms"]
    noisy = " †" if r.get("foreign_cpu", 0.0) >= noise_cpu else ""
    return f"{fmt(lat['p50'], 2)} / {fmt(lat['p99'], 2)}{noisy}"


def processes_table(results: list[dict[str, Any]], noise_cpu: float = 0.1) -> str:
    """``--processes``: capacity and lateness of each N against N=1's."""
    base = next((r for r in results if r.get("processes") == 1), None)
    base_ev = base.get("max_events_per_s") if base else None
    head = (
        "| processes | max events/s | ratio to N=1 | server CPU µs/event @max | "
        "CPU (server + loadgen) @max | ft lateness p50 / p99 @50% of N=1's max (ms) | "
        "server CPU µs/event there | ft lateness p50 / p99 @50% of own max (ms) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in results:
        best = [s for s in r.get("rate_steps", []) if s.get("passed")]
        top = max(best, key=lambda s: s["target_events_per_s"]) if best else None
        ev = r.get("max_events_per_s") or 0.0
        ratio = f"{ev / base_ev:.2f}" if base_ev else "-"
        capped = "≥ " if r.get("rate_capped") else ""
        cpu = "-"
        if top:
            cpu = f"{fmt(top.get('server_cpu_frac'), 2)} + {fmt(top.get('loadgen_cpu_frac'), 2)}"
        # N=1's run at 50% of its own max is the equal-load run
        equal = r.get("lateness", {}).get("0.5") if r is base else r.get("equal_load")
        lines.append(
            f"| {r.get('processes', 1)} | {capped}{ev:,.0f} | {ratio} | {_per_event_us(top)} | "
            f"{cpu} | {_lateness(equal, noise_cpu)} | {_per_event_us(equal)} | "
            f"{_lateness(r.get('lateness', {}).get('0.5'), noise_cpu)} |"
        )
    return "\n".join(lines)


def load_note() -> str:
    """What else ran on the machine when the bench ended (it is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average at the end: {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "targets",
        nargs="*",
        default=["emulator"],
        help=f"emulator, {', '.join(CANDIDATES)}, or a name with --server-cmd",
    )
    p.add_argument("--server-cmd", help="template: {port} {ttft_ms} {tps} {config}")
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--tps", type=float, default=150.0, help="decode tok/s in the rate phase")
    p.add_argument(
        "--stream-tokens",
        type=int,
        default=151,
        help="tokens per stream in the rate phase (151 -> 57 events, 1.2 s)",
    )
    p.add_argument("--hold-tps", type=float, default=3.0, help="decode tok/s in the hold phase")
    p.add_argument(
        "--hold-levels",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1000, 2500, 5000, 10000, 15000, 19500],
        help="concurrency levels (RLIMIT_NOFILE is 20000 here, per process)",
    )
    p.add_argument("--hold-s", type=float, default=4.0, help="seconds all streams are open")
    p.add_argument("--ramp-rate", type=float, default=2000.0, help="new connections/s in hold")
    p.add_argument("--rate-start", type=float, default=5000.0, help="first offered events/s")
    p.add_argument("--rate-factor", type=float, default=1.5)
    p.add_argument("--rate-cap", type=float, default=400_000.0)
    p.add_argument("--bisect", type=int, default=2)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per rate step")
    p.add_argument("--lateness-duration", type=float, default=8.0)
    p.add_argument(
        "--max-p99-ms",
        type=float,
        default=50.0,
        help="first-token lateness p99 above this fails a step",
    )
    p.add_argument("--budget-s", type=float, default=300.0, help="rate phase: stop after")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a failed step this often when other processes took CPU in it",
    )
    p.add_argument(
        "--noise-cpu",
        type=float,
        default=0.1,
        help="CPU (cores) used by others on CPU 0 or 1 that makes a failure suspect",
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=0.1,
        help="before a step, wait until both CPUs are busier than this no more",
    )
    p.add_argument("--quiet-wait", type=float, default=60.0, help="...for at most this long")
    p.add_argument(
        "--phases",
        default="hold,rate,churn",
        help="comma list of hold, rate (rate includes the 50%%/90%% lateness runs), churn "
        "(emulator only)",
    )
    p.add_argument(
        "--churn-users",
        type=int,
        default=200,
        help="churn: closed-loop connections of the calibration step (or of every step with "
        "--churn-cpu 0)",
    )
    p.add_argument(
        "--churn-cpu",
        type=float,
        default=0.5,
        help="churn: scale the users so the emulator uses this share of its core (0: as given)",
    )
    p.add_argument("--churn-max-users", type=int, default=4000, help="churn: at most")
    p.add_argument("--churn-runs", type=int, default=3, help="churn: measured steps")
    p.add_argument("--churn-s", type=float, default=10.0, help="churn: measured seconds per step")
    p.add_argument(
        "--churn-tokens",
        type=int,
        default=120,
        help="churn: tokens per request (120 at --tps 150 after --ttft-ms 200: ~1 s)",
    )
    p.add_argument(
        "--churn-served-log",
        type=int,
        default=100_000,
        help="churn: the emulator's served_log_size (its default: the log on, as in a real run)",
    )
    p.add_argument(
        "--processes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1],
        help="emulator target: bench 'loadkit emulator --processes N' for each N (e.g. 1,2)",
    )
    p.add_argument(
        "--loadgens",
        type=int,
        default=1,
        help="rate phase: load generator processes (one saturates a core at ~70k events/s), "
        "each on its own CPU after the server's when the machine has them",
    )
    p.add_argument(
        "--server-cpus",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="pin the server to these CPUs (default: 0..N-1 for N processes), e.g. 0 to put "
        "two processes on one core and see what the second process costs",
    )
    p.add_argument("--quick", action="store_true", help="short windows, fewer levels")
    p.add_argument("--out", help="write all results as JSON here")
    a = p.parse_args(argv)
    if a.quick:
        a.hold_levels = [2000, 10000]
        a.hold_s, a.duration, a.lateness_duration, a.bisect = 2.0, 3.0, 4.0, 1
        a.rate_factor = 2.0
        a.churn_runs, a.churn_s = 2, 6.0
    unknown = set(a.phases.split(",")) - {"hold", "rate", "churn"}
    if unknown:
        p.error(f"--phases: unknown {', '.join(sorted(unknown))} (hold, rate, churn)")
    if a.churn_users < 1 or a.churn_runs < 1 or a.churn_s <= 0 or not 0 <= a.churn_cpu < 1:
        p.error("--churn-users, --churn-runs, --churn-s positive; --churn-cpu in [0, 1)")
    return a


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through server() so the server is stopped


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    cpus = os.cpu_count() or 1
    if any(n < 1 or SERVER_CPU + n > cpus for n in a.processes):
        raise SystemExit(f"--processes: each N from 1 to {cpus}, not {a.processes}")
    if a.loadgens < 1:
        raise SystemExit(f"--loadgens: 1 or more, not {a.loadgens}")
    results = []
    churns: list[dict[str, Any]] = []
    targets: list[Target] = []
    streams = "hold" in a.phases or "rate" in a.phases
    for name in a.targets:
        if name not in CANDIDATES and name != "emulator" and not a.server_cmd:
            raise SystemExit(f"unknown target {name!r}")
        counts = a.processes if name == "emulator" else [1]
        for n in counts:
            targets.append(
                Target(
                    name, a.server_cmd, processes=n, loadgens=a.loadgens, server_cpus=a.server_cpus
                )
            )
            if streams:
                results.append(bench_target(targets[-1], a))
            if "churn" in a.phases and name == "emulator":
                print(f"== {targets[-1].label}: churn", flush=True)
                churns.append(bench_churn(targets[-1], a))
            if a.out:
                everything = {"streams": results, "churn": churns}
                Path(a.out).write_text(json.dumps(everything, indent=1, default=str))
    compare = len(a.processes) > 1 and "emulator" in a.targets and "rate" in a.phases
    if compare:
        base = next(r for r in results if r["target"] == "emulator")
        for t, r in zip(targets, results, strict=True):
            if t.name == "emulator" and t.processes > 1 and base["max_events_per_s"]:
                level = base["max_events_per_s"] * 0.5
                print(f"== {t.label} at 50% of N=1's max ({level:,.0f} events/s)", flush=True)
                r["equal_load"] = rate_step(t, a, level, a.lateness_duration)
        if a.out:
            everything = {"streams": results, "churn": churns}
            Path(a.out).write_text(json.dumps(everything, indent=1, default=str))
    if streams:
        print()
        print(
            f"long streams: TTFT {a.ttft_ms:g} ms, rate phase {a.stream_tokens} tokens at "
            f"{a.tps:g} tok/s; hold phase {a.hold_tps:g} tok/s; fail at p99 > {a.max_p99_ms:g} ms"
        )
        print(table(results, a.noise_cpu))
        print(f"† other processes used >= {a.noise_cpu:g} of a benchmark CPU during that run")
    if compare:
        print()
        print(processes_table([r for r in results if r["target"].startswith("emulator")]))
    if churns:
        print()
        print(
            f"churn: closed loop, every request a new body, {a.churn_tokens} tokens at "
            f"{a.tps:g} tok/s after TTFT {a.ttft_ms:g} ms, served log {a.churn_served_log:,}; "
            f"users scaled to {a.churn_cpu:g} of a core; floor = an idle uvloop loop's timer "
            "lateness on the emulator's core in the same run (bench/timer_floor.py)"
        )
        print(churn_table(churns, a.noise_cpu))
        print(f"† other processes used >= {a.noise_cpu:g} of a benchmark CPU during that run")
    print(load_note())


if __name__ == "__main__":
    main()
