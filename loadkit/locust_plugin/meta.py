"""The run's metadata for its results (``results.RunMeta``), read from Locust's options."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import loadkit
from loadkit.locust_plugin.run import Run
from loadkit.redact import redact_url
from loadkit.results import RunMeta, Versions


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit() -> str | None:
    """loadkit's own commit when it runs from a git checkout (else None)."""
    root = Path(loadkit.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        found = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def _arrival(options: Any) -> str:
    if options.sweep:
        return (
            f"sweep {options.sweep} {options.sweep_start:g}..{options.sweep_stop:g} "
            f"step {options.sweep_step:g} every {options.sweep_step_duration:g} s"
        )
    if getattr(options, "trace", ""):
        loop = ", looped" if options.trace_loop else ""
        return f"trace replay, {options.trace} at {options.trace_speedup:g}x{loop}"
    if options.arrival_rate:
        return f"open loop, {options.arrival} {options.arrival_rate:g}/s"
    return "closed loop"


def _target_kind(run: Run) -> Literal["embedded emulator", "emulator", "api"]:
    plan = run.plan
    if plan is not None and plan.embedded_url:
        return "embedded emulator"
    return "emulator" if plan is not None and plan.key_kind == "emulator" else "api"


def current_meta(run: Run) -> RunMeta:
    """The metadata of ``run`` (on the local runner or the master)."""
    processes = 1
    workers = getattr(run.environment.runner, "worker_count", None)  # a master
    if workers is not None:
        processes = max(1, len(run.final_reports), workers)
    return run_meta(run, processes)


def run_meta(run: Run, processes: int) -> RunMeta:
    options = run.options
    plan = run.plan
    workload = plan.workload if plan is not None else {}
    canonical = json.dumps(workload, sort_keys=True, separators=(",", ":"))
    run_time = getattr(options, "run_time", None)
    if isinstance(run_time, str):  # as typed in the web UI's form
        from locust.util.timespan import parse_timespan

        run_time = parse_timespan(run_time) if run_time.strip() else None
    return RunMeta(
        started_at=datetime.fromtimestamp(run.aggregate.started_at, UTC).isoformat(
            timespec="seconds"
        ),
        workload=str(workload.get("name", "")),
        workload_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        target=redact_url(plan.target if plan is not None else ""),
        target_kind=_target_kind(run),
        users=options.num_users,
        spawn_rate=options.spawn_rate,
        run_time_s=float(run_time) if run_time else None,
        arrival=_arrival(options),
        processes=processes,
        http_stack=getattr(options, "http_stack", "lean"),
        versions=Versions(
            loadkit=loadkit.__version__,
            locust=_version("locust"),
            anthropic=_version("anthropic"),
            python=platform.python_version(),
        ),
        git_commit=git_commit(),
    )
