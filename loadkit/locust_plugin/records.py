"""Wiring of ``--records PATH.jsonl``: every process that runs users writes its own file.

A local run writes PATH. In a distributed run (``--processes``, or workers on other hosts)
each worker writes ``<stem>-worker<N><suffix>`` next to it (``records-worker0.jsonl``...):
no record crosses the network, and no process waits for another's disk. Workers report how
many records they wrote and dropped; the master prints the totals. The first start of a
process truncates its file; later starts of the same process (the web UI) append, and each
line carries its ``run_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.reporting import result_event
from loadkit.locust_plugin.run import Run
from loadkit.record import ResultRecord
from loadkit.sinks.records import RecordsWriter

log = logging.getLogger("loadkit")
WIRE_KEY = "loadkit_records"


@dataclass
class RecordsState:
    """This process's writer, and the master's view of every worker's totals."""

    #: this start's writer; kept once closed, so that a record that comes later is counted
    #: as dropped (and logged), not lost silently
    writer: RecordsWriter | None = None
    closed: bool = False
    opened_before: bool = False
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)


def process_path(path: str, run: Run) -> Path:
    """The file this process writes: PATH, or PATH with ``-worker<N>`` before its suffix."""
    given = Path(path).expanduser()
    if not run.role.reports:
        return given
    index = getattr(run.environment.runner, "worker_index", 0)
    return given.with_name(f"{given.stem}-worker{index}{given.suffix}")


def _describe(stats: dict[str, Any]) -> str:
    text = f"records: {stats['written']} written to {stats['path']}, {stats['dropped']} dropped"
    return text + (f" ({stats['error']})" if stats.get("error") else "")


def _open(run: Run, state: RecordsState) -> None:
    path = getattr(run.options, "records", "") if run.options is not None else ""
    if not path or not run.role.sends or run.refused:
        return
    target = process_path(path, run)
    role = run.role.name
    if role == "worker":
        role = f"worker-{getattr(run.environment.runner, 'worker_index', 0)}"
    try:
        state.writer = RecordsWriter(target, run.run_id, role, append=state.opened_before)
    except OSError as err:
        say(f"loadkit: records: cannot write {target} ({err.strerror or err}); none written")
        return
    state.opened_before = True


def _close(state: RecordsState) -> None:
    if state.writer is not None and not state.closed:
        state.writer.close()
        state.closed = True


def _test_start(run: Run, state: RecordsState) -> None:
    _close(state)
    state.writer = None
    state.closed = False
    state.workers = {}
    _open(run, state)


def _test_stop(run: Run, state: RecordsState) -> None:
    _close(state)
    if state.writer is not None and not run.role.reports:
        say(f"loadkit: {_describe(state.writer.stats.as_dict())}")
    if run.role.collects and state.workers:
        parts = list(state.workers.values())
        written = sum(p["written"] for p in parts)
        dropped = sum(p["dropped"] for p in parts)
        say(
            f"loadkit: records: {written} written by {len(parts)} worker(s), {dropped} dropped"
            + "".join(f"\n  {_describe(p)}" for p in parts)
        )


def _report(state: RecordsState, data: dict[str, Any]) -> None:
    if state.writer is not None:
        data[WIRE_KEY] = state.writer.stats.as_dict()


def _worker_report(state: RecordsState, client_id: str, data: dict[str, Any]) -> None:
    stats = data.get(WIRE_KEY)
    if isinstance(stats, dict):
        state.workers[client_id] = stats


def install(events: Any, run: Run) -> RecordsState:
    """The records listeners for ``run``; install after the run's own (hooks.install), so
    that the master prints its totals after the workers' final reports are in."""
    state = RecordsState()
    events.test_start.add_listener(lambda **_: _test_start(run, state))
    events.test_stop.add_listener(lambda **_: _test_stop(run, state))
    events.report_to_master.add_listener(lambda client_id, data, **_: _report(state, data))
    events.worker_report.add_listener(
        lambda client_id, data, **_: _worker_report(state, client_id, data)
    )
    installed = run

    def on_result(record: ResultRecord, run: Run, **_: Any) -> None:
        writer = state.writer
        if run is installed and writer is not None:  # (one process can hold several runs)
            stopping = run.stopping_at
            writer.add(record, bool(stopping) and record.t_end >= stopping)

    result_event.add_listener(on_result)
    return state
