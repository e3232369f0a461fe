"""Trace replay in Locust (``--trace FILE.jsonl``): each entry sent open-loop at its recorded
time (divided by ``--trace-speedup``), again and again with ``--trace-loop``.

One user per process schedules its share of the entries (the others idle), each request in
its own greenlet, at most its share of ``--max-in-flight`` at once; lateness is counted as in
the open loop (late starts, start lateness, cap waits, starts not made). Distributed, entry i
is sent by the process in position i mod N of the ready workers (ordered by Locust's worker
index, sent with the start): each entry exactly once. Every process reads the trace file
itself (the master sends its digest: a worker with another file refuses the start), and the
workers start the trace together, at a wall-clock time the master sets a second ahead (plus
the time it took to read the trace, which each worker reads too).

Without ``--trace-loop`` the run ends by itself once every entry was sent and answered: a
local runner stops; a worker tells the master, which stops once all of them have.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Iterator
from typing import Any

import gevent
from gevent.pool import Pool

from loadkit.gctune import tune_gc
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.run import Run, resolve_path
from loadkit.locust_plugin.starts import send_on_schedule
from loadkit.locust_plugin.trace_state import TraceReplay
from loadkit.results import TraceSection
from loadkit.trace import FORMATS, MOONCAKE_BLOCK_SIZE, Trace, TraceEntry, TraceError, load_trace
from loadkit.trace_prompts import TracePrompts
from loadkit.workload import Workload

TRACE_KEY = "loadkit_trace"  # parsed_options: what the master tells its workers of the trace
DONE_MESSAGE = "loadkit_trace_done"
DISTRIBUTED_LEAD_S = 1.0  # workers start the trace this long after the master planned it


def add_options(parser: Any) -> None:
    parser.add_argument(
        "--trace",
        default="",
        help="Replay this trace (JSON Lines, loadkit or Mooncake format; see docs/traces.md) "
        "open-loop at its recorded times, instead of drawing from the workload",
    )
    parser.add_argument(
        "--trace-format",
        default="auto",
        choices=list(FORMATS),
        help="The trace's format (auto: told by its first entry's fields)",
    )
    parser.add_argument(
        "--trace-speedup",
        type=float,
        default=1.0,
        help="Replay the trace this many times faster (its times divided by this)",
    )
    parser.add_argument(
        "--trace-loop",
        action="store_true",
        default=False,
        help="Start the trace again at its end (offset by its span) until the run ends",
    )
    parser.add_argument(
        "--trace-model",
        default="",
        help="Model of a Mooncake trace's requests (default: the workload's first model)",
    )
    parser.add_argument(
        "--trace-speed",
        default="standard",
        choices=["standard", "fast"],
        help="Speed of a Mooncake trace's requests",
    )
    parser.add_argument(
        "--trace-block-size",
        type=int,
        default=MOONCAKE_BLOCK_SIZE,
        help="Tokens per hash_ids block of a Mooncake trace",
    )


def check_options(options: Any) -> None:
    """TraceError for options a trace replay cannot honour."""
    if getattr(options, "arrival_rate", 0) > 0:
        raise TraceError("--trace sends at the trace's times: leave out --arrival-rate")
    if getattr(options, "sweep", ""):
        raise TraceError("--trace sends at the trace's times: leave out --sweep")
    speedup = float(options.trace_speedup)
    if not (math.isfinite(speedup) and 0 < speedup <= 1e6):
        raise TraceError(f"--trace-speedup must be more than 0 (at most 1e6), not {speedup:g}")


def _load(options: Any, model: str) -> Trace:
    return load_trace(
        resolve_path(options.trace),
        options.trace_format,
        model=model,
        speed=options.trace_speed,
        block_size=options.trace_block_size,
    )


def prepare_master(run: Run, workload: Workload) -> None:
    """On the master (or local runner) at each start: check and load the trace, and tell
    the workers their shares; TraceError (a ValueError) refuses the start."""
    options = run.options
    setattr(options, TRACE_KEY, None)
    run.trace = None
    if not getattr(options, "trace", ""):
        return
    check_options(options)
    model = options.trace_model or workload.models[0].model
    started = time.time()
    trace = _load(options, model)
    if options.trace_loop and trace.period_ms <= 0:
        raise TraceError(
            f"--trace-loop: every entry of {options.trace} starts at the same time, so the "
            "trace has no span to repeat it after"
        )
    workers = [0]
    origin = 0.0
    if run.role.collects:
        runner = run.environment.runner
        workers = sorted(runner.get_worker_index(c.id) for c in runner.clients.ready)
        # the workers read the trace too (about as long as this took) before they prepare
        origin = time.time() + (time.time() - started) + DISTRIBUTED_LEAD_S
        if not workers:
            raise TraceError("--trace: no worker is ready")
    if max(1, int(options.num_users or 1)) < len(workers):
        raise TraceError(
            f"--trace needs a user on every process: give at least {len(workers)} users (-u)"
        )
    setattr(
        options,
        TRACE_KEY,
        {"digest": trace.digest, "workers": workers, "origin_wall": origin, "model": model},
    )
    run.trace = TraceReplay(trace, options.trace_speedup, options.trace_loop, 0, len(workers))


def prepare_process(run: Run) -> None:
    """On every process that sends, after ``Run.prepare``: its share, and prompts calibrated
    for the models in it."""
    options = run.options
    told = getattr(options, TRACE_KEY, None)
    if not told:
        run.trace = None
        return
    workers: list[int] = list(told["workers"])
    state = run.trace if run.role.decides else None
    if state is None:
        trace = _load(options, told["model"])
        if trace.digest != told["digest"]:
            raise TraceError(
                f"the trace {options.trace} on this worker differs from the master's (its "
                "sha256 does not match): give every process the same file"
            )
        index = int(getattr(run.environment.runner, "worker_index", -1))
        if index not in workers:
            raise TraceError("this worker joined after the trace was shared out: restart it")
        state = TraceReplay(trace, options.trace_speedup, options.trace_loop)
        state.slot, state.processes = workers.index(index), len(workers)
    state.origin_wall = float(told["origin_wall"])
    state.in_flight_cap = max(1, math.ceil(options.max_in_flight / state.processes))
    assert run.workload is not None and run.client is not None
    seed = (options.workload_seed or secrets.randbits(32)) + state.slot
    prompts = TracePrompts(state.trace, seed, run.workload.name)
    for model in sorted({entry.model for entry in state.share()}):
        prompts.calibrate(model, run.client.count_tokens)
    state.prompts = prompts
    state.claimed = state.done = False
    run.trace = state
    # The trace lives as long as the run: out of the cyclic collector's walks (a full
    # collection over a 20,000-entry Mooncake trace took ~20 ms here, a stall of every stream).
    tune_gc()


def _schedule(state: TraceReplay, origin_ns: int) -> Iterator[tuple[int, TraceEntry]]:
    """(intended start in perf_counter_ns, entry) of this process's share, pass after pass."""
    share = state.share()
    period_ns = state.trace.period_ms * 1e6 / state.speedup
    for n in itertools.count() if state.loop else range(1):
        base = origin_ns + int(n * period_ns)
        for entry in share:
            yield base + int(entry.offset_ms * 1e6 / state.speedup), entry


def replay(user: Any, run: Run) -> None:
    """The user's task under ``--trace``: the first user of the process replays its share,
    the others idle."""
    state = run.trace
    assert state is not None
    if state.claimed or state.done or state.prompts is None:
        gevent.sleep(1.0)
        return
    state.claimed = True
    origin_ns = time.perf_counter_ns()
    if state.origin_wall:
        origin_ns += int((state.origin_wall - time.time()) * 1e9)
    # (a process with no share, when the trace has fewer entries than processes, is done)
    if not state.share() or _replay(user, run, state, _schedule(state, origin_ns)):
        state.done = True
        _finished(run, state)


def _replay(
    user: Any, run: Run, state: TraceReplay, schedule: Iterator[tuple[int, TraceEntry]]
) -> bool:
    """Send every entry at its time; True when all were sent and answered."""
    prompts = state.prompts
    assert prompts is not None
    starts = ((due, prompts.spec(entry)) for due, entry in schedule)
    return send_on_schedule(run, Pool(state.in_flight_cap), starts, user.send)


def _stop(run: Run, why: str) -> None:
    environment = run.environment
    say(f"trace replay: {why}; stopping")
    runner = environment.runner
    gevent.spawn(runner.quit if environment.parsed_options.headless else runner.stop)


def _finished(run: Run, state: TraceReplay) -> None:
    if run.role.decides:
        _stop(run, "every entry was sent and answered")
    elif run.role.reports:
        run.environment.runner.send_message(DONE_MESSAGE, {"slot": state.slot})


def _worker_done(run: Run, data: Any) -> None:
    state = run.trace
    if state is None or state.done:
        return
    state.done_slots.add(int(data["slot"]))
    if len(state.done_slots) >= state.processes:
        state.done = True
        _stop(run, f"every entry was sent and answered by the {state.processes} workers")


def section(state: TraceReplay) -> TraceSection:
    trace = state.trace
    return TraceSection(
        path=trace.path,
        format=trace.format,
        sha256=trace.digest,
        entries=len(trace.entries),
        speedup=state.speedup,
        loop=state.loop,
        processes=state.processes,
        completed=state.done,
    )


def describe(found: TraceSection) -> str:
    how = f"{found.speedup:g}x" + (", looped" if found.loop else "")
    end = "every entry was sent and answered" if found.completed else "not every entry was sent"
    return f"trace: {found.entries} entries of {found.path} ({found.format} format, {how}): {end}"


def install(runner: Any, run: Run) -> None:
    """The master hears from each worker when its share is done."""
    if run.role.collects:
        runner.register_message(DONE_MESSAGE, lambda msg, **_: _worker_done(run, msg.data))
