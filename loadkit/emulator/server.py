"""Run the emulator: bind a loopback port, serve until stopped.

A control token (``run(control_token=...)``, else the environment variable
``LOADKIT_EMULATOR_CONTROL_TOKEN``) makes the mutating control endpoints require it; see
``loadkit.emulator.control``. Prefer the environment variable: a command-line argument is visible
to every user of the machine (``ps``). The token is never printed.

``run(..., worker=...)`` is one process of ``loadkit emulator --processes N``
(``loadkit.emulator.supervisor`` starts them): it binds the port with ``SO_REUSEPORT`` next to
its siblings, shares limits and cache with them (``loadkit.emulator.cluster``), and tells the
supervisor it is listening instead of printing the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from loadkit.emulator.app import Emulator
from loadkit.emulator.cluster import Cluster, Worker
from loadkit.emulator.config import EmulatorConfig
from loadkit.emulator.http import Connection, HttpCounters, HttpSettings
from loadkit.emulator.looplag import LoopLag
from loadkit.emulator.ports import bind_reusable
from loadkit.gctune import tune_gc


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


CONTROL_TOKEN_ENV = "LOADKIT_EMULATOR_CONTROL_TOKEN"


def control_token_from(value: str | None) -> str | None:
    """The token given, else the environment's; None (no token) if neither is set."""
    if value:
        return value
    return os.environ.get(CONTROL_TOKEN_ENV) or None


async def serve(
    config: EmulatorConfig,
    host: str,
    port: int,
    seed: int | None,
    control_token: str | None = None,
    worker: Worker | None = None,
    ready_fd: int | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    emulator = Emulator(config, seed, control_token=control_token)
    settings, counters = emulator.http_settings, emulator.stats.http
    loop_lag = LoopLag(loop)
    loop_lag.start()
    emulator.control.loop_lag = loop_lag

    def connection() -> Connection:
        return Connection(emulator.handle, settings, counters)

    if worker is None:
        server = await loop.create_server(connection, host, port, backlog=16384, reuse_address=True)
    else:
        server = await loop.create_server(connection, sock=reuse_port_socket(host, port))
        cluster = Cluster(worker, emulator.service)
        cluster.loop_lag = loop_lag
        emulator.control.cluster = cluster
        # Siblings' requests: limits and counts of their own, apart from the public ones.
        own_settings, own_counters = HttpSettings(), HttpCounters()
        siblings = await loop.create_unix_server(
            lambda: Connection(cluster.handle_internal, own_settings, own_counters, False),
            worker.socket_path(worker.index),
        )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if worker is None:
        bound = server.sockets[0].getsockname()
        if control_token:
            print("loadkit emulator: control endpoints require the control token", file=sys.stderr)
        # The first line on stdout is the contract with loadkit's process launcher.
        print(f"loadkit emulator listening on http://{bound[0]}:{bound[1]}", flush=True)
        async with server:
            await stop.wait()
        print("loadkit emulator stopped", file=sys.stderr, flush=True)
        return
    assert ready_fd is not None
    os.write(ready_fd, bytes([worker.index]))
    os.close(ready_fd)
    async with server, siblings:
        await stop.wait()
    with contextlib.suppress(OSError):
        Path(worker.socket_path(worker.index)).unlink()


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that siblings may bind too (``SO_REUSEPORT``)."""
    sock = bind_reusable(host, port)
    sock.listen(16384)
    sock.setblocking(False)
    return sock


def run(
    config: EmulatorConfig,
    host: str,
    port: int,
    seed: int | None,
    control_token: str | None = None,
    worker: Worker | None = None,
    ready_fd: int | None = None,
) -> None:
    _install_fast_loop()
    _raise_fd_limit()
    tune_gc()
    token = control_token_from(control_token)
    asyncio.run(serve(config, host, port, seed, token, worker, ready_fd))


def _raise_fd_limit() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
