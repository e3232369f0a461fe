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

from locust import events
from locust.runners import MasterRunner, WorkerRunner

from loadkit.locust_plugin.reporting import result_event
from loadkit.locust_plugin.state import STATE
from loadkit.record import ResultRecord
from loadkit.redact import redact_url
from loadkit.sinks.influxdb import InfluxSink, LineFormatter, SinkSettings

log = logging.getLogger("loadkit")
WIRE_KEY = "loadkit_influxdb"


class _Sinks:
    def __init__(self) -> None:
        self.sink: InfluxSink | None = None
        self.announced = False
        self.totals: dict[str, dict[str, Any]] = {}  # master: the last stats of each process


SINKS = _Sinks()


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


def _worker_name(runner: Any) -> str:
    index = getattr(runner, "worker_index", 0)
    role = "master" if isinstance(runner, MasterRunner) else f"worker-{index}"
    return f"{socket.gethostname()}-{role}"


def _open(environment: Any) -> None:
    options = environment.parsed_options
    url = options.influxdb_url
    if not SINKS.announced:
        SINKS.announced = True
        if url:
            log.info(
                "loadkit: InfluxDB sink on: %s, bucket %s", redact_url(url), options.influxdb_bucket
            )
        else:
            log.info("loadkit: InfluxDB sink off (set INFLUXDB_V2_URL or --influxdb-url)")
    if not url:
        return
    line_file = options.influxdb_line_file
    if line_file and isinstance(environment.runner, WorkerRunner):
        line_file = f"{line_file}.{environment.runner.worker_index}"
    settings = SinkSettings(
        url=url,
        token=os.environ.get("INFLUXDB_V2_TOKEN", ""),
        org=options.influxdb_org,
        bucket=options.influxdb_bucket,
        line_file=line_file,
    )
    SINKS.sink = InfluxSink(settings, LineFormatter(STATE.run_id, _worker_name(environment.runner)))


def _close() -> dict[str, Any] | None:
    sink, SINKS.sink = SINKS.sink, None
    return sink.close().as_dict() if sink is not None else None


def _run_event(environment: Any, event: str) -> None:
    sink = SINKS.sink
    if sink is not None and not isinstance(environment.runner, WorkerRunner):
        sink.add(sink.formatter.run_event_line(event, environment.runner.user_count))


def _on_result(record: ResultRecord, **_: Any) -> None:
    sink = SINKS.sink
    if sink is not None:
        sink.add(record)


def _test_start(environment: Any, **_: Any) -> None:
    _close()
    SINKS.totals = {}
    _open(environment)
    _run_event(environment, "start")


def _spawning_complete(user_count: int, **_: Any) -> None:
    sink = SINKS.sink
    if sink is not None:
        sink.add(sink.formatter.run_event_line("users", user_count))


def _test_stop(environment: Any, **_: Any) -> None:
    _run_event(environment, "stop")
    stats = _close()
    if stats is not None:
        SINKS.totals["self"] = stats


def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if "self" in SINKS.totals:
        data[WIRE_KEY] = SINKS.totals["self"]
    elif SINKS.sink is not None:
        data[WIRE_KEY] = SINKS.sink.stats.as_dict()


def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    stats = data.get(WIRE_KEY)
    if stats is not None:
        SINKS.totals[client_id] = stats


def summary() -> dict[str, Any] | None:
    """Points written and dropped over all processes, or None when the sink is off."""
    if not SINKS.totals and SINKS.sink is None:
        return None
    parts = list(SINKS.totals.values())
    if SINKS.sink is not None:
        parts.append(SINKS.sink.stats.as_dict())
    keys = ("written", "dropped", "failed_writes", "rejected")
    totals: dict[str, Any] = {key: sum(part.get(key, 0) for part in parts) for key in keys}
    totals["rejection"] = next((p["rejection"] for p in parts if p.get("rejection")), "")
    return totals


def install() -> None:
    events.test_start.add_listener(_test_start)
    events.spawning_complete.add_listener(_spawning_complete)
    events.test_stop.add_listener(_test_stop)
    events.report_to_master.add_listener(_report)
    events.worker_report.add_listener(_worker_report)
    result_event.add_listener(_on_result)
