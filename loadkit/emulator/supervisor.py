"""``loadkit emulator --processes N``: N worker processes on one port, and their supervisor.

The supervisor picks the port (binding it with ``SO_REUSEPORT`` until the workers listen),
makes what the workers share (rate-limit buckets in shared memory, the prompt cache it keeps
itself, a private directory for their Unix sockets), then forks the workers. Each worker is
a whole emulator (``loadkit.emulator.server``) on its own event loop; the kernel spreads
incoming connections over them. Once every worker listens, the supervisor prints the one
``listening on`` line the launcher waits for, and then answers the workers' prompt-cache
calls until it is told to stop.

Dying together: a worker asks the kernel for SIGTERM when the supervisor dies and watches its
parent pid too (``parentdeath.tie_to_parent``). A worker that exits on its own takes the whole
emulator down (exit status 1, naming it): its counts would be missing from every merged
answer, so no answer would be exact any more.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from loadkit.emulator.config import EmulatorConfig
from loadkit.emulator.ports import bind_reusable
from loadkit.emulator.sharedcache import CacheOwner
from loadkit.emulator.sharedlimits import SharedBuckets

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker_seed(seed: int | None, index: int) -> int | None:
    """Each worker's seed: distinct, and the same for the same ``--seed``."""
    return None if seed is None else seed * 1000 + index


class Supervisor:
    def __init__(
        self,
        config: EmulatorConfig,
        host: str,
        port: int,
        seed: int | None,
        control_token: str | None,
        processes: int,
    ) -> None:
        self.config = config
        self.seed = seed
        self.control_token = control_token
        self.processes = processes
        # bound, never listening: holds the port, takes no connections
        self.reserved = bind_reusable(host, port)
        self.host = host
        self.port = int(self.reserved.getsockname()[1])
        self.socket_dir = Path(tempfile.mkdtemp(prefix="loadkit-emulator-"))  # mode 0700
        self.buckets = SharedBuckets()
        self.cache = CacheOwner(config, processes)
        self.workers: dict[int, int] = {}  # pid -> index
        self.pid = os.getpid()
        self._selector = selectors.DefaultSelector()
        self._extra: set[int] = set()

    def run(self) -> int:
        ready_r, ready_w = os.pipe()
        wake_r, wake_w = os.pipe()
        try:
            for index in range(self.processes):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the worker's side ends in os._exit
                    os.close(ready_r)
                    os.close(wake_r)
                    os.close(wake_w)
                    self._worker(index, ready_w)
                self.workers[pid] = index
            os.close(ready_w)
            self.cache.close_worker_ends()
            os.set_blocking(wake_w, False)
            signal.set_wakeup_fd(wake_w)
            for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, lambda signum, frame: None)  # the wakeup fd tells
            self._selector.register(wake_r, selectors.EVENT_READ)
            for sock in self.cache.sockets:
                self._selector.register(sock, selectors.EVENT_READ)
            problem = self._await_ready(ready_r, wake_r)
            self._selector.unregister(ready_r)
            self.reserved.close()
            if problem is None:
                url_host = f"[{self.host}]" if ":" in self.host else self.host
                if self.control_token:
                    print(
                        "loadkit emulator: control endpoints require the control token",
                        file=sys.stderr,
                    )
                print(
                    f"loadkit emulator: {self.processes} processes, pids "
                    f"{' '.join(str(pid) for pid in self.workers)}",
                    file=sys.stderr,
                    flush=True,
                )
                # The first line on stdout is the contract with loadkit's process launcher.
                print(f"loadkit emulator listening on http://{url_host}:{self.port}", flush=True)
                problem = self._serve(wake_r)
        finally:
            self._stop()
            self._selector.close()
            os.close(ready_r)
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if problem:
            print(f"loadkit emulator: {problem}", file=sys.stderr, flush=True)
            return 1
        print("loadkit emulator stopped", file=sys.stderr, flush=True)
        return 0

    # the worker's side ----------------------------------------------------------------------
    def _worker(self, index: int, ready_w: int) -> None:
        code = 1
        try:
            from loadkit.emulator.cluster import Worker
            from loadkit.emulator.parentdeath import tie_to_parent
            from loadkit.emulator.server import run

            tie_to_parent(self.pid)
            self.reserved.close()
            worker = Worker(
                index, self.processes, self.socket_dir, self.buckets, self.cache.worker_cache(index)
            )
            seed = worker_seed(self.seed, index)
            run(self.config, self.host, self.port, seed, self.control_token, worker, ready_w)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    # the supervisor's side ------------------------------------------------------------------
    def _await_ready(self, ready_r: int, wake_r: int) -> str | None:
        """None once every worker listens; else what went wrong."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = 0

        def count(data: bytes) -> str | None:
            nonlocal ready
            if not data:
                return "a worker process failed to start"
            ready += len(data)
            return None

        while ready < self.processes:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"only {ready} of {self.processes} processes started in time"
            problem = self._step(wake_r, min(left, 0.2), ready_r, count)
            if problem is not None:
                return problem
        return None

    def _serve(self, wake_r: int) -> str | None:
        """Answers cache calls until a stop signal (None) or a worker's death (the problem)."""
        while True:
            problem = self._step(wake_r, None)
            if problem is not None:
                return problem or None

    def _step(
        self,
        wake_r: int,
        timeout: float | None,
        extra: int | None = None,
        on_extra: Callable[[bytes], str | None] | None = None,
    ) -> str | None:
        """One wait: answers the cache calls that came; "" on a stop signal, a worker's
        death as a problem, else what ``on_extra`` says of the data on ``extra``."""
        selector = self._selector
        if extra is not None and extra not in self._extra:
            selector.register(extra, selectors.EVENT_READ)
            self._extra.add(extra)
        for key, _ in selector.select(timeout):
            fileobj = key.fileobj
            if fileobj == wake_r:
                signals = os.read(wake_r, 512)
                if any(s in signals for s in STOP_SIGNALS):
                    return ""
            elif fileobj == extra and on_extra is not None:
                problem = on_extra(os.read(extra, 64))
                if problem is not None:
                    return problem
            elif isinstance(fileobj, socket.socket) and not self.cache.answer(fileobj):
                selector.unregister(fileobj)
        return self._reap()

    def _reap(self) -> str | None:
        """Collects exited workers; says which one exited, if any did."""
        problem = None
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.workers.pop(pid, None)
            if index is not None and problem is None:
                problem = f"worker {index} (pid {pid}) exited with status {_describe(status)}"
        return problem

    def _stop(self) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.workers:
            pid, _ = os.waitpid(next(iter(self.workers)), 0)
            self.workers.pop(pid, None)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return str(os.waitstatus_to_exitcode(status))


def run_processes(
    config: EmulatorConfig,
    host: str,
    port: int,
    seed: int | None,
    control_token: str | None,
    processes: int,
) -> int:
    if processes < 2:
        raise ValueError("run_processes needs at least 2 processes")
    return Supervisor(config, host, port, seed, control_token, processes).run()
