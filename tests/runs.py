"""Locust runs for the tests: one way to start loadkit's locustfiles in a subprocess, headless,
with a summary JSON, in an environment without the caller's API key or InfluxDB settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

from loadkit.results import load_summary

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = "locustfiles/messages.py"


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ANTHROPIC_* and INFLUXDB_*, plus ``extra``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "INFLUXDB_"))}
    environ.update(extra or {})
    return environ


def own_master_port(args: tuple[str, ...] | list[str]) -> list[str]:
    """With ``--processes``, a master port of its own: tests run two at a time, and two
    masters on Locust's default port 5557 cannot both bind it."""
    if "--processes" not in args or "--master-bind-port" in args:
        return []
    port = str(free_port())
    return ["--master-port", port, "--master-bind-port", port]


def locust_command(locustfile: str, summary: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--only-summary",
        "--summary-json", str(summary), *args, *own_master_port(args),
    ]  # fmt: skip


def run_locust(
    folder: Path,
    *args: str,
    locustfile: str = MESSAGES,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    summary: str = "summary.json",
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """Run to the end; returns the process and its summary JSON (None if none was written).
    A summary written must fit the results schema, whatever the run did."""
    path = folder / summary
    result = subprocess.run(
        locust_command(locustfile, path, *args),
        capture_output=True, text=True, timeout=timeout, env=clean_environment(env), cwd=ROOT,
    )  # fmt: skip
    if not path.exists():
        return result, None
    load_summary(path)  # raises ResultsError naming the field that does not fit
    return result, json.loads(path.read_text())


def start_locust(
    folder: Path,
    *args: str,
    locustfile: str = MESSAGES,
    env: dict[str, str] | None = None,
    summary: str = "summary.json",
) -> subprocess.Popen[str]:
    """Start without waiting (the caller signals it, kills its target, or communicates)."""
    return subprocess.Popen(
        locust_command(locustfile, folder / summary, *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_environment(env),
        cwd=ROOT,
    )  # fmt: skip


def settled_emulator(base_url: str, within_s: float = 5.0) -> tuple[Any, list[dict[str, Any]]]:
    """The emulator's ``stats`` and ``served`` once nothing is in flight (streams cut at a
    run's end finish on the server a moment later), waiting at most ``within_s``."""
    deadline = time.monotonic() + within_s
    stats = httpx2.get(f"{base_url}/_emulator/stats").json()
    while stats["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = httpx2.get(f"{base_url}/_emulator/stats").json()
    return stats, httpx2.get(f"{base_url}/_emulator/served").json()


def wait_for_web_ui(
    url: str, process: subprocess.Popen[Any], log: Path, within_s: float = 90
) -> None:
    """Until Locust's page answers (starting workers on a loaded 2-core machine takes a while);
    RuntimeError with the log's end if the process died or the time ran out."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Locust's web UI did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
