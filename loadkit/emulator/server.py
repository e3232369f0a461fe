"""Run the emulator: bind a loopback port, serve until stopped.

A control token (``run(control_token=...)``, else the environment variable
``LOADKIT_EMULATOR_CONTROL_TOKEN``) makes the mutating control endpoints require it; see
``loadkit.emulator.control``. Prefer the environment variable: a command-line argument is visible
to every user of the machine (``ps``). The token is never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from loadkit.emulator.app import Emulator
from loadkit.emulator.config import EmulatorConfig
from loadkit.emulator.http import Connection
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
) -> None:
    loop = asyncio.get_running_loop()
    emulator = Emulator(config, seed, control_token=control_token)
    settings, counters = emulator.http_settings, emulator.stats.http
    server = await loop.create_server(
        lambda: Connection(emulator.handle, settings, counters),
        host,
        port,
        backlog=16384,
        reuse_address=True,
    )
    bound = server.sockets[0].getsockname()
    if control_token:
        print("loadkit emulator: control endpoints require the control token", file=sys.stderr)
    # The first line on stdout is the contract with loadkit's process launcher.
    print(f"loadkit emulator listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print("loadkit emulator stopped", file=sys.stderr, flush=True)


def run(
    config: EmulatorConfig,
    host: str,
    port: int,
    seed: int | None,
    control_token: str | None = None,
) -> None:
    _install_fast_loop()
    _raise_fd_limit()
    tune_gc()
    asyncio.run(serve(config, host, port, seed, control_token_from(control_token)))


def _raise_fd_limit() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
