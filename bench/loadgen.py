"""Fast SSE load generator for the emulator benchmark (uvloop + raw asyncio.Protocol).

Speaks just enough HTTP/1.1 to POST ``/v1/messages`` with ``"stream": true`` over
keep-alive connections and to follow the chunked SSE reply: it counts events
(``b"event: "``), stamps the first ``content_block_delta`` and the end of the
response, and reads the planned TTFT from the ``x-emulator-ttft-ms`` header.

First-token lateness = (t_first_delta - t_request_sent) - planned_ttft.

Modes (all bounded in time, loopback only):

``open``   open loop: start ``--rate`` streams/s on evenly spaced deadlines, each on an
           idle keep-alive connection from a pool (pre-opened, grown on demand).
``closed`` ``--connections`` connections, each running streams back to back.
``hold``   ``--connections`` connections opened at ``--ramp-rate`` per second, each
           running exactly one (long) stream: how many concurrent streams are held.

Prints one JSON object on stdout.  Pins itself to ``--cpu`` (default 1).

    python bench/loadgen.py --port 8001 --mode open --rate 500 --max-tokens 151 \
        --expect-tps 150 --warmup 2 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import resource
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import uvloop

_EV = b"event: "
_DELTA = b"event: content_block_delta"
_STOP = b"event: message_stop"
_TAIL = len(_DELTA)
# uvloop's loop.time() has 1 ms granularity (libuv's cached uv_now); stamp with a ns clock.
clock = time.perf_counter


def events_for(n_tokens: int) -> int:
    """SSE events in one stream of ``n_tokens`` (1 token in the first delta, then 3)."""
    deltas = 1 + math.ceil(max(0, n_tokens - 1) / 3)
    return deltas + 6


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def procs_cpu_s(pids: list[int]) -> float | None:
    """CPU seconds of all ``pids`` (None if one cannot be read)."""
    total = 0.0
    for pid in pids:
        used = proc_cpu_s(pid)
        if used is None:
            return None
        total += used
    return total


def cpu_busy_s() -> dict[str, float]:
    """Busy seconds per CPU from /proc/stat: user+nice+system+steal, and irq+softirq apart."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *v = line.split()
                n = [int(x) for x in v]
                out[name] = (n[0] + n[1] + n[2] + n[7]) / tck
                out[name + "_irq"] = (n[5] + n[6]) / tck
    except (OSError, ValueError, IndexError):
        pass
    return out


def proc_mem_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) / 1024.0
    except OSError:
        pass
    return out


@dataclass
class Stats:
    """Shared counters.  ``in_window`` streams are those whose request went out in the window."""

    events: int = 0
    active: int = 0
    peak_active: int = 0
    started: int = 0
    completed: int = 0
    completed_in_window: int = 0
    window_open: bool = False
    window_closed: bool = False
    lateness_ms: list[float] = field(default_factory=list)
    end_lateness_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    no_ttft_header: int = 0
    incomplete: int = 0


class Client(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.loop = gen.loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.now = 0.0
        self.busy = False
        self.closed = False
        self.done: asyncio.Future[bool] | None = None
        self._reset()

    def _reset(self) -> None:
        self.t_sent = 0.0
        self.t_first = 0.0
        self.ttft_ms: float | None = None
        self.events = 0
        self.tail = b""
        self.tail_events = 0
        self.saw_stop = False
        self.in_window = False
        self.status = 0

    # transport ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.conns.discard(self)
        if self.busy:
            self.gen.stats.errors["closed_mid_stream" if exc is None else type(exc).__name__] += 1
            self._finish(ok=False)

    def data_received(self, data: bytes) -> None:
        self.now = clock()
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.gen.stats.errors[f"parse:{type(e).__name__}"] += 1
            self._finish(ok=False)
            self.abort()

    # httptools callbacks --------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-emulator-ttft-ms":
            with contextlib.suppress(ValueError):
                self.ttft_ms = float(value)

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        data = self.tail + body if self.tail else body
        n = data.count(_EV) - self.tail_events
        self.events += n
        self.gen.stats.events += n
        if not self.t_first and _DELTA in data:
            self.t_first = self.now
        if not self.saw_stop and _STOP in data:
            self.saw_stop = True
        self.tail = data[-_TAIL:]
        self.tail_events = self.tail.count(_EV)

    def on_message_complete(self) -> None:
        self._finish(ok=True)

    # requests ---------------------------------------------------------------
    def send(self, sched: float | None = None) -> None:
        assert self.transport is not None and not self.busy
        self._reset()
        st = self.gen.stats
        self.parser = httptools.HttpResponseParser(self)
        self.busy = True
        self.done = self.loop.create_future()
        self.transport.write(self.gen.next_request())
        self.t_sent = clock()
        self.in_window = st.window_open and not st.window_closed
        st.started += 1
        st.active += 1
        st.peak_active = max(st.peak_active, st.active)
        if sched is not None and self.in_window:
            st.send_lag_ms.append((self.t_sent - sched) * 1000.0)

    def _finish(self, ok: bool) -> None:
        if not self.busy:
            return
        self.busy = False
        st = self.gen.stats
        st.active -= 1
        st.completed += 1
        st.statuses[self.status] += 1
        good = ok and self.status == 200 and self.saw_stop
        if ok and self.status == 200 and not self.saw_stop:
            st.incomplete += 1
        if self.in_window:
            st.completed_in_window += 1
            if good:
                if self.ttft_ms is None:
                    st.no_ttft_header += 1
                elif self.t_first:
                    late = (self.t_first - self.t_sent) * 1000.0 - self.ttft_ms
                    st.lateness_ms.append(late)
                    if self.gen.dump is not None:
                        self.gen.dump.append((self.t_sent, late, self.now))
                    if self.gen.planned_total_ms is not None:
                        planned = self.ttft_ms + self.gen.planned_total_ms
                        st.end_lateness_ms.append((self.now - self.t_sent) * 1000.0 - planned)
        if self.done is not None and not self.done.done():
            self.done.set_result(good)
        if good and not self.closed:
            self.gen.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0) so 20k client sockets leave no TIME_WAIT behind."""
        t = self.transport
        if t is None or self.closed:
            return
        self.closed = True
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.close()
        self.gen.conns.discard(self)


class LoadGen:
    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.args = args
        self.loop = loop
        self.stats = Stats()
        self.conns: set[Client] = set()
        self.idle: list[Client] = []
        self.want_idle = True  # open mode reuses connections; closed/hold drive their own
        self.n_requests = 0
        self.request = self.build_request("hi")
        self.planned_total_ms: float | None = None
        if args.expect_tps:
            self.planned_total_ms = (args.max_tokens - 1) / args.expect_tps * 1000.0
        self.connect_errors: Counter[str] = Counter()
        self.n_connects = 0
        self.t_window: tuple[float, float] = (0.0, 0.0)
        self.ev_window: tuple[int, int] = (0, 0)
        self.cpu_window: tuple[float, float] = (0.0, 0.0)
        self.srv_cpu: tuple[float | None, float | None] = (None, None)
        self.cpus: tuple[dict[str, float], dict[str, float]] = ({}, {})
        # (t_sent, first-token lateness ms, t_end) per good stream, for --dump
        self.dump: list[tuple[float, float, float]] | None = [] if args.dump else None
        self.lag_ms: list[float] = []

    def build_request(self, text: str) -> bytes:
        a = self.args
        body = json.dumps(
            {
                "model": a.model,
                "max_tokens": a.max_tokens,
                "stream": True,
                "messages": [{"role": "user", "content": text}],
            },
            separators=(",", ":"),
        ).encode()
        return (
            f"POST /v1/messages HTTP/1.1\r\nhost: {a.host}:{a.port}\r\n"
            "x-api-key: bench\r\nanthropic-version: 2023-06-01\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

    def next_request(self) -> bytes:
        """The same request every time, or (``--new-bodies``) one whose prompt no request
        sent before had, of about ``--prompt-chars`` characters."""
        if not self.args.new_bodies:
            return self.request
        self.n_requests += 1
        n = self.n_requests
        filler = f"request {n}: " + "lorem ipsum dolor sit amet " * (self.args.prompt_chars // 27)
        return self.build_request(filler)

    def release(self, c: Client) -> None:
        if self.want_idle:
            self.idle.append(c)

    async def connect(self) -> Client | None:
        try:
            self.n_connects += 1
            local = None
            if self.args.source_ips > 0:
                # Spread client sockets over 127.0.0.2.. so no source address needs more than a
                # few thousand ephemeral ports: connect() walks the even half of the port range
                # first and stalls the loadgen's loop for 100s of ms past ~14k sockets per address.
                local = (f"127.0.0.{2 + self.n_connects % self.args.source_ips}", 0)
            _, c = await self.loop.create_connection(
                lambda: Client(self), self.args.host, self.args.port, local_addr=local
            )
        except OSError as e:
            self.connect_errors[f"{type(e).__name__}:{e.errno}"] += 1
            return None
        self.conns.add(c)
        return c

    # window bookkeeping -----------------------------------------------------
    def open_window(self) -> None:
        st = self.stats
        st.window_open = True
        self.t_window = (clock(), 0.0)
        self.ev_window = (st.events, 0)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_window = (ru.ru_utime + ru.ru_stime, 0.0)
        self.cpus = (cpu_busy_s(), {})
        if self.args.server_pid:
            self.srv_cpu = (procs_cpu_s(self.args.server_pid), None)

    def close_window(self) -> None:
        st = self.stats
        st.window_closed = True
        self.t_window = (self.t_window[0], clock())
        self.ev_window = (self.ev_window[0], st.events)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_window = (self.cpu_window[0], ru.ru_utime + ru.ru_stime)
        self.cpus = (self.cpus[0], cpu_busy_s())
        if self.args.server_pid:
            self.srv_cpu = (self.srv_cpu[0], procs_cpu_s(self.args.server_pid))

    async def open_pool(self, n: int) -> None:
        batch = 500
        for i in range(0, n, batch):
            got = await asyncio.gather(*(self.connect() for _ in range(min(batch, n - i))))
            self.idle.extend(c for c in got if c is not None)

    async def watch_lag(self) -> None:
        """Sample the loadgen's own event-loop lag every 5 ms (its stalls inflate lateness)."""
        while True:
            t = clock()
            await asyncio.sleep(0.005)
            lag = (clock() - t - 0.005) * 1000.0
            if self.stats.window_open and not self.stats.window_closed:
                self.lag_ms.append(lag)
                if lag > 50 and os.environ.get("LOADGEN_DEBUG"):
                    print(
                        f"lag {lag:.0f} ms at {t - self.t_window[0]:.2f}s conns={len(self.conns)}"
                        f" active={self.stats.active}",
                        file=sys.stderr,
                    )

    async def drain(self, timeout: float) -> None:
        end = clock() + timeout
        while self.stats.active > 0 and clock() < end:
            await asyncio.sleep(0.05)

    # modes ------------------------------------------------------------------
    async def run_open(self) -> None:
        a = self.args
        stream_s = a.expect_ttft_ms / 1000.0 + (self.planned_total_ms or 1000.0) / 1000.0
        await self.open_pool(int(a.rate * stream_s * 1.25) + 16)
        pending: set[asyncio.Task[None]] = set()

        async def start_on_new(sched: float) -> None:
            c = await self.connect()
            if c is not None:
                c.send(sched)

        t0 = clock() + 0.05
        warm_end, end = t0 + a.warmup, t0 + a.warmup + a.duration
        i = 0
        while True:
            now = clock()
            if now >= end:
                break
            if not self.stats.window_open and now >= warm_end:
                self.open_window()
            while True:
                sched = t0 + i / a.rate
                if sched > now:
                    break
                i += 1
                c = None
                while self.idle:
                    c = self.idle.pop()
                    if not c.closed:
                        break
                    c = None
                if c is not None:
                    c.send(sched)
                else:
                    task = self.loop.create_task(start_on_new(sched))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, min(t0 + i / a.rate, end) - clock()))
        self.close_window()
        await self.drain(a.drain)

    async def run_closed(self) -> None:
        a = self.args
        self.want_idle = False
        t0 = clock() + 0.05
        warm_end, end = t0 + a.warmup, t0 + a.warmup + a.duration

        async def worker(k: int) -> None:
            await asyncio.sleep(max(0.0, t0 + k / a.ramp_rate - clock()))
            c = await self.connect()
            while c is not None and not c.closed and clock() < end:
                c.send()
                assert c.done is not None
                if not await c.done:
                    c = await self.connect()

        async def window() -> None:
            await asyncio.sleep(max(0.0, warm_end - clock()))
            self.open_window()
            await asyncio.sleep(max(0.0, end - clock()))
            self.close_window()

        wt = self.loop.create_task(window())
        workers = [self.loop.create_task(worker(k)) for k in range(a.connections)]
        await wt
        await asyncio.wait(workers, timeout=a.drain)
        for w in workers:
            w.cancel()

    async def run_hold(self) -> None:
        """Every connection runs one stream; the window spans the whole test."""
        a = self.args
        self.want_idle = False
        self.open_window()
        t0 = clock() + 0.05

        async def one() -> None:
            c = await self.connect()
            if c is not None:
                c.send()

        starters: list[asyncio.Task[None]] = []
        while len(starters) < a.connections:
            due = min(a.connections, int((clock() - t0) * a.ramp_rate) + 1)
            starters.extend(self.loop.create_task(one()) for _ in range(due - len(starters)))
            await asyncio.sleep(max(0.0, t0 + len(starters) / a.ramp_rate - clock()))
        await asyncio.gather(*starters)
        ramp_done = clock()
        stream_s = a.expect_ttft_ms / 1000.0 + (self.planned_total_ms or 0.0) / 1000.0
        await self.drain(stream_s + a.drain)
        self.ramp_s = ramp_done - t0
        self.close_window()

    # report -------------------------------------------------------------------
    def report(self, wall_s: float) -> dict[str, Any]:
        a, st = self.args, self.stats
        win_s = max(1e-9, self.t_window[1] - self.t_window[0])
        ev = self.ev_window[1] - self.ev_window[0]
        epstream = events_for(a.max_tokens)
        out: dict[str, Any] = {
            "mode": a.mode,
            "max_tokens": a.max_tokens,
            "events_per_stream": epstream,
            "window_s": round(win_s, 3),
            "events_in_window": ev,
            "events_per_s": round(ev / win_s, 1),
            "streams_started": st.started,
            "streams_completed": st.completed,
            "streams_in_window_completed": st.completed_in_window,
            "streams_good_in_window": len(st.lateness_ms),
            "peak_active_streams": st.peak_active,
            "still_active_at_end": st.active,
            "statuses": {str(k): v for k, v in sorted(st.statuses.items())},
            "errors": dict(st.errors),
            "connect_errors": dict(self.connect_errors),
            "incomplete_streams": st.incomplete,
            "no_ttft_header": st.no_ttft_header,
            "first_token_lateness_ms": summary(st.lateness_ms),
            "end_lateness_ms": summary(st.end_lateness_ms),
            "loadgen_loop_lag_ms": summary(self.lag_ms),
            "loadgen_cpu_frac": round((self.cpu_window[1] - self.cpu_window[0]) / win_s, 3),
            "cpu_busy_frac": {
                k: round((v - self.cpus[0].get(k, v)) / win_s, 3) for k, v in self.cpus[1].items()
            },
            "wall_s": round(wall_s, 2),
        }
        if a.mode == "open":
            out["offered_streams_per_s"] = a.rate
            out["offered_events_per_s"] = round(a.rate * epstream, 1)
            out["send_lag_ms"] = summary(st.send_lag_ms)
            out["connections"] = len(self.conns)
        if a.mode == "hold":
            out["connections"] = a.connections
            out["ramp_s"] = round(getattr(self, "ramp_s", 0.0), 2)
            out["expected_events"] = a.connections * epstream
        if a.server_pid:
            c0, c1 = self.srv_cpu
            out["server_cpu_frac"] = (
                round((c1 - c0) / win_s, 3) if c0 is not None and c1 is not None else None
            )
            out["server_mem_mb"] = proc_mem_mb(a.server_pid[0])
        return out


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["open", "closed", "hold"], default="open")
    p.add_argument("--rate", type=float, default=100.0, help="open: streams started per second")
    p.add_argument("--connections", type=int, default=100, help="closed/hold: connections")
    p.add_argument("--ramp-rate", type=float, default=4000.0, help="closed/hold: new conns/s")
    p.add_argument("--max-tokens", type=int, default=151)
    p.add_argument("--model", default="claude-opus-4-6")
    p.add_argument("--warmup", type=float, default=2.0, help="open/closed: seconds not measured")
    p.add_argument("--duration", type=float, default=5.0, help="open/closed: measured seconds")
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait for in-flight")
    p.add_argument("--expect-ttft-ms", type=float, default=200.0, help="for pool sizing")
    p.add_argument(
        "--expect-tps",
        type=float,
        default=0.0,
        help="server decode tok/s (for end-of-stream lateness and pool sizing; 0 = unknown)",
    )
    p.add_argument("--cpu", type=int, default=1, help="CPU to pin to (-1: no pinning)")
    p.add_argument(
        "--server-pid",
        type=lambda s: [int(pid) for pid in s.split(",")],
        default=[],
        help="sample its CPU and memory (PID[,PID...]: the CPU of all, the memory of the first)",
    )
    p.add_argument("--hard-timeout", type=float, default=120.0)
    p.add_argument(
        "--source-ips",
        type=int,
        default=8,
        help="bind client sockets round-robin to 127.0.0.2..(N+1); 0 = let the kernel "
        "choose (only for a 127.x target)",
    )
    p.add_argument(
        "--new-bodies",
        action="store_true",
        help="churn: every request a new body (a prompt no earlier request had)",
    )
    p.add_argument("--prompt-chars", type=int, default=800, help="--new-bodies: prompt length")
    p.add_argument("--dump", help="write 't_sent late_ms t_end' per good stream to this file")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gen = LoadGen(args, loop)
    t0 = time.monotonic()
    watcher = loop.create_task(gen.watch_lag())
    run = {"open": gen.run_open, "closed": gen.run_closed, "hold": gen.run_hold}[args.mode]
    try:
        await asyncio.wait_for(run(), timeout=args.hard_timeout)
        timed_out = False
    except TimeoutError:
        timed_out = True
        if not gen.stats.window_closed:
            gen.close_window()
    watcher.cancel()
    out = gen.report(time.monotonic() - t0)
    out["hard_timeout_hit"] = timed_out
    if gen.dump is not None:
        t0w = gen.t_window[0]
        with open(args.dump, "w") as f:
            for ts, late, te in sorted(gen.dump):
                f.write(f"{ts - t0w:.6f} {late:.3f} {te - t0w:.6f}\n")
    for c in list(gen.conns):
        c.abort()
    await asyncio.sleep(0.05)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.host.startswith("127."):
        args.source_ips = 0
    if args.cpu >= 0:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.cpu})
    nofile = raise_nofile()
    if args.connections + 64 > nofile and args.mode != "open":
        print(f"warning: RLIMIT_NOFILE={nofile} < connections", file=sys.stderr)
    # A bounded run: leaking the few reference cycles is cheaper than a full collection
    # stalling the loop for ~100 ms with 20k connections alive (seen as lateness spikes).
    gc.collect()
    gc.freeze()
    gc.disable()
    out = uvloop.run(amain(args))
    out["rlimit_nofile"] = nofile
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
