"""Locust runs for the tests: one way to start loadkit's locustfiles in a subprocess, headless,
with a summary JSON, in an environment without the caller's API key or InfluxDB settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
