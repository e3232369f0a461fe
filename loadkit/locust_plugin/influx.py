"""Wiring of the InfluxDB sink into Locust: every process that runs users writes directly.

Configured by influxdb-client's environment conventions (INFLUXDB_V2_URL, INFLUXDB_V2_TOKEN,
INFLUXDB_V2_ORG) plus INFLUXDB_V2_BUCKET, or by the options below. The token is read from the
environment only: it is never an option, never logged, never shown in the web UI.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from loadkit.locust_plugin.reporting import result_event
from loadkit.locust_plugin.run import Run
from loadkit.record import ResultRecord
from loadkit.redact import redact_url
from loadkit.results import InfluxSection
from loadkit.sinks.influxdb import InfluxSink, LineFormatter, SinkSettings

log = logging.getLogger("loadkit")
WIRE_KEY = "loadkit_influxdb"


def add_options(parser: Any) -> None:
    parser.add_argument(
        "--influxdb-url",
        default=os.environ.get("INFLUXDB_V2_URL", ""),
        help="InfluxDB URL for per-request points (default INFLUXDB_V2_URL; empty: off). "
        "The token is read from INFLUXDB_V2_TOKEN only",
    )
    parser.add_argument(
        "--influxdb-org",
        default=os.environ.get("INFLUXDB_V2_ORG", "loadkit"),
        help="InfluxDB organisation (default INFLUXDB_V2_ORG)",
    )
    parser.add_argument(
        "--influxdb-bucket",
        default=os.environ.get("INFLUXDB_V2_BUCKET", "loadkit"),
        help="InfluxDB bucket (default INFLUXDB_V2_BUCKET)",
    )
    parser.add_argument(
        "--influxdb-optional",
        action="store_true",
        default=False,
        help="A sink that delivered nothing does not fail the run (exit code 6 otherwise)",
    )
    parser.add_argument(
        "--influxdb-line-file",
        default="",
        help="Also append every point written, as line protocol, to this file",
    )


def _worker_name(run: Run) -> str:
    index = getattr(run.environment.runner, "worker_index", 0)
    role = "master" if run.role.collects else f"worker-{index}"
    return f"{socket.gethostname()}-{role}"


def _open(run: Run) -> None:
    environment = run.environment
    sinks = run.sinks
    options = environment.parsed_options
    url = options.influxdb_url
    if not sinks.announced:
        sinks.announced = True
        if url:
            log.info(
                "loadkit: InfluxDB sink on: %s, bucket %s", redact_url(url), options.influxdb_bucket
            )
        else:
            log.info("loadkit: InfluxDB sink off (set INFLUXDB_V2_URL or --influxdb-url)")
    if not url:
        return
    line_file = options.influxdb_line_file
    if line_file and run.role.reports:
        line_file = f"{line_file}.{environment.runner.worker_index}"
    settings = SinkSettings(
        url=url,
        token=os.environ.get("INFLUXDB_V2_TOKEN", ""),
        org=options.influxdb_org,
        bucket=options.influxdb_bucket,
        line_file=line_file,
    )
    sinks.sink = InfluxSink(settings, LineFormatter(run.run_id, _worker_name(run)))


def _close(run: Run) -> dict[str, Any] | None:
    sink, run.sinks.sink = run.sinks.sink, None
    return sink.close().as_dict() if sink is not None else None


def _run_event(run: Run, event: str) -> None:
    sink = run.sinks.sink
    runner = run.environment.runner
    if sink is not None and run.role.decides:
        sink.add(sink.formatter.run_event_line(event, runner.user_count))


def _on_result(run: Run, record: ResultRecord) -> None:
    sink = run.sinks.sink
    if sink is not None:
        sink.add(record)


def _test_start(run: Run) -> None:
    _close(run)
    run.sinks.totals = {}
    _open(run)
    _run_event(run, "start")


def _spawning_complete(run: Run, user_count: int) -> None:
    sink = run.sinks.sink
    if sink is not None:
        sink.add(sink.formatter.run_event_line("users", user_count))


def _test_stop(run: Run) -> None:
    _run_event(run, "stop")
    stats = _close(run)
    if stats is not None:
        run.sinks.totals["self"] = stats


def _report(run: Run, data: dict[str, Any]) -> None:
    sinks = run.sinks
    if "self" in sinks.totals:
        data[WIRE_KEY] = sinks.totals["self"]
    elif sinks.sink is not None:
        data[WIRE_KEY] = sinks.sink.stats.as_dict()


def _worker_report(run: Run, client_id: str, data: dict[str, Any]) -> None:
    stats = data.get(WIRE_KEY)
    if stats is not None:
        run.sinks.totals[client_id] = stats


def summary(run: Run) -> InfluxSection | None:
    """Points written and dropped over all processes, or None when the sink is off."""
    sinks = run.sinks
    if not sinks.totals and sinks.sink is None:
        return None
    parts = list(sinks.totals.values())
    if sinks.sink is not None:
        parts.append(sinks.sink.stats.as_dict())

    def total(key: str) -> int:
        return sum(int(part.get(key, 0)) for part in parts)

    return InfluxSection(
        written=total("written"),
        dropped=total("dropped"),
        failed_writes=total("failed_writes"),
        rejected=total("rejected"),
        rejection=next((str(p["rejection"]) for p in parts if p.get("rejection")), ""),
    )


def install(events: Any, run: Run) -> None:
    """The sink's listeners for ``run``: opened at each start, closed at its stop."""
    events.test_start.add_listener(lambda **_: _test_start(run))
    events.spawning_complete.add_listener(
        lambda user_count, **_: _spawning_complete(run, user_count)
    )
    events.test_stop.add_listener(lambda **_: _test_stop(run))
    events.report_to_master.add_listener(lambda client_id, data, **_: _report(run, data))
    events.worker_report.add_listener(
        lambda client_id, data, **_: _worker_report(run, client_id, data)
    )
    installed = run

    def on_result(record: ResultRecord, run: Run, **_: Any) -> None:
        if run is installed:  # (one process can hold several environments)
            _on_result(run, record)

    result_event.add_listener(on_result)
