"""Locust event wiring: options, run preparation, worker reports, the end-of-run summary.

Process roles: the local runner does everything; in distributed runs the master validates
the workload, starts the embedded emulator if needed and forwards both (through
``parsed_options``) to the workers, which run the users and report their aggregates every
few seconds; the master merges them and prints the summary.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import gevent
from locust import events
from locust import stats as locust_stats
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from loadkit.accounting import EmulatorCounters, reconcile_run
from loadkit.emulator.config import ConfigError, load_config
from loadkit.emulator.launcher import EmulatorProcess, EmulatorStartError
from loadkit.gctune import tune_gc
from loadkit.locust_plugin import capacity, influx, webui
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.options import add_options
from loadkit.locust_plugin.state import (
    STATE,
    fallback_settings,
    load_workload_option,
    resolve_path,
)
from loadkit.summary import format_table, summary_data, write_json
from loadkit.workload import WorkloadError

log = logging.getLogger("loadkit")
# httpx logs every request at INFO, which Locust's logging shows: far too much in a load test.
for _chatty in ("httpx2", "httpcore2", "httpx", "httpcore"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)
WIRE_KEY = "loadkit"
FINAL_KEY = "loadkit_final"
STOP_MESSAGE = "loadkit_stop_and_report"
FINAL_REPORT_TIMEOUT_S = 20.0
EXIT_BREACH = 3  # a scenario's end-of-run check failed
#: Scenario checks run at the end on the master: (environment, summary data) -> breaches.
END_CHECKS: list[Callable[[Any, dict[str, Any]], list[str]]] = []
# Workers report every 3 s; a web-UI stop waits this long for their last report.
LAST_REPORT_WAIT_S = 3.5


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    add_options(parser)
    influx.add_options(parser)
    capacity.add_options(parser)


def _fail_run(environment: Any, message: str) -> None:
    """A run that cannot start: say why, once, and end it with exit code 2."""
    log.error("%s", message)
    say(f"loadkit: {message}")
    environment.process_exit_code = 2
    runner = environment.runner
    if environment.parsed_options and environment.parsed_options.headless:
        gevent.spawn(runner.quit)
    else:
        gevent.spawn(runner.stop)


@events.init.add_listener
def _init(environment: Any, runner: Any, web_ui: Any = None, **_: Any) -> None:
    # CPU-heavy imports leave gevent's cached clock behind; without this, -t ends early.
    gevent.get_hub().loop.update_now()
    tune_gc()  # full collections would stall every stream of the process (and its timings)
    STATE.environment = environment
    if web_ui is not None:
        webui.install(web_ui)
    if isinstance(runner, WorkerRunner):
        runner.register_message(STOP_MESSAGE, _stop_and_report)
        return
    if environment.parsed_options is None:
        return
    try:  # fail fast, before anything starts, on a bad workload or emulator config
        load_workload_option(environment.parsed_options.workload)
        if environment.parsed_options.emulator_config:
            load_config(resolve_path(environment.parsed_options.emulator_config))
    except (WorkloadError, ConfigError) as err:
        _fail_run(environment, str(err))


def _given_target(environment: Any) -> str:
    """The target the operator named (option, Locust's host, environment), or ""."""
    options = environment.parsed_options
    host = environment.host or ""
    if STATE.emulator is not None and host.rstrip("/") == STATE.emulator.base_url:
        host = ""  # set by loadkit to the embedded emulator, not given
    given = options.target_url or host or os.environ.get("ANTHROPIC_BASE_URL", "")
    return str(given).rstrip("/")


def _target(environment: Any) -> str:
    options = environment.parsed_options
    given = _given_target(environment)
    if given:
        options.loadkit_embedded_url = ""
        environment.host = given
        return given
    if STATE.emulator is None:
        config_path = resolve_path(options.emulator_config) if options.emulator_config else None
        STATE.emulator = EmulatorProcess(config_path=config_path)
        STATE.emulator.start()
        log.info("loadkit: started the embedded emulator at %s", STATE.emulator.base_url)
    options.loadkit_embedded_url = STATE.emulator.base_url
    environment.host = STATE.emulator.base_url  # Locust's own views name the target
    return STATE.emulator.base_url


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    runner = environment.runner
    STATE.finished = STATE.stopped = False
    STATE.stopping_at = 0
    STATE.aggregate.reset()
    if not isinstance(runner, WorkerRunner):
        try:
            workload = load_workload_option(options.workload)
            options.loadkit_workload_data = workload.model_dump(mode="json", by_alias=True)
            options.loadkit_workload_slos = workload.slos
            STATE.fallback_settings = fallback_settings(workload, options)
            options.loadkit_target = _target(environment)
            # (before anything reaches the target: a remote one needs a spending cap)
            capacity.prepare_master(environment, workload.slos, options.loadkit_target)
            # When the target is a loadkit emulator, its counters are reconciled at the end.
            counters = EmulatorCounters(options.loadkit_target)
            STATE.emulator_counters = counters if counters.available else None
        except (WorkloadError, ConfigError, EmulatorStartError, ValueError) as err:
            _fail_run(environment, str(err))
            return
        options.loadkit_run_id = STATE.run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(
            3
        )
        log.info(
            "loadkit run %s: workload %s, target %s",
            STATE.run_id,
            workload.name,
            options.loadkit_target,
        )
    else:
        STATE.run_id = options.loadkit_run_id
    capacity.reset()
    try:
        capacity.prepare_process(environment, options.loadkit_workload_slos)
    except ValueError as err:
        _fail_run(environment, str(err))
        return
    if isinstance(runner, MasterRunner):
        return
    try:
        STATE.prepare(options, options.loadkit_workload_data, options.loadkit_target)
    except Exception as err:  # calibration against an unreachable target, a missing key...
        STATE.close_client()
        _fail_run(environment, f"cannot prepare the run: {err}")


@events.test_stopping.add_listener
def _test_stopping(**_: Any) -> None:
    # open-loop schedules end here: starts due after this are not owed
    STATE.stopping_at = time.perf_counter_ns()


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data[WIRE_KEY] = STATE.aggregate.take_wire()
    data[FINAL_KEY] = STATE.stopped


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    STATE.aggregate.merge_wire(data.get(WIRE_KEY) or [])
    if data.get(FINAL_KEY):
        STATE.final_reports.add(client_id)


# Locust's master, when a headless run ends, gives its workers 0.5 s to send their last
# report before it stops listening, and a worker needs longer than that to cut its streams
# when it runs many users: its last seconds (and its cancelled requests) would be lost. So
# the master first asks every worker to stop and report, and waits for those reports.
def _stop_and_report(environment: Any, msg: Any, **_: Any) -> None:
    runner = environment.runner
    runner.stop()  # cuts the streams (reported as cancelled); test_stop closes the sinks
    STATE.stopped = True
    runner._send_stats()  # the report Locust sends on quit, sent now (a private method)


def _collect_final_reports(environment: Any) -> None:
    runner = environment.runner
    expected = {client.id for client in runner.clients.all}
    STATE.final_reports.clear()
    for client_id in expected:
        runner.send_message(STOP_MESSAGE, None, client_id)
    deadline = time.monotonic() + FINAL_REPORT_TIMEOUT_S
    while not expected <= STATE.final_reports and time.monotonic() < deadline:
        gevent.sleep(0.05)
    missing = expected - STATE.final_reports
    if missing:
        log.warning(
            "loadkit: no final report from %s within %.0f s: its last requests are missing",
            ", ".join(sorted(missing)),
            FINAL_REPORT_TIMEOUT_S,
        )


def _finish(environment: Any) -> None:
    """Print the summary (and write the JSON) once per run, on the local runner or master."""
    if STATE.finished or isinstance(environment.runner, WorkerRunner) or not STATE.run_id:
        return
    STATE.finished = True
    STATE.aggregate.ended_at = STATE.aggregate.ended_at or time.time()
    data = summary_data(STATE.aggregate, STATE.run_id, STATE.fallback_settings)
    say("\n" + format_table(data))
    if STATE.emulator_counters is not None:
        data["accounting"] = reconcile_run(STATE.aggregate, STATE.emulator_counters)
    sink = influx.summary()
    if sink is not None:
        data["influxdb"] = sink
        say(
            f"influxdb: {sink['written']} points written, {sink['dropped']} dropped, "
            f"{sink['failed_writes']} failed writes retried"
        )
    verdict: int | None = None
    if END_CHECKS:
        breaches = [line for check in END_CHECKS for line in check(environment, data)]
        data["breaches"] = breaches
        for line in breaches:
            say(f"BREACH: {line}")
        # A scenario with checks is judged by them: expected failures (429s) do not fail it.
        verdict = EXIT_BREACH if breaches else 0
    slo_breaches = capacity.finish(environment, STATE.aggregate, data)
    if "slos" in data and verdict in (None, 0):
        verdict = capacity.EXIT_SLO if slo_breaches else 0
    if data.get("accounting", {}).get("mismatches") and verdict in (None, 0):
        say("loadkit: exit code 3: requests are unaccounted for (see accounting above)")
        verdict = EXIT_BREACH
    if verdict is not None and environment.process_exit_code in (None, 0):
        environment.process_exit_code = verdict
    say("")
    path = environment.parsed_options.summary_json
    if path:
        write_json(data, path)
        say(f"loadkit: summary written to {path}")


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    STATE.aggregate.ended_at = time.time()
    if environment.parsed_options.headless:
        if isinstance(runner, MasterRunner):
            _collect_final_reports(environment)
        return  # the summary comes at quitting
    if isinstance(runner, LocalRunner):
        _finish(environment)
    else:
        gevent.spawn_later(LAST_REPORT_WAIT_S, _finish, environment)


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    runner = environment.runner
    STATE.close_client()
    if isinstance(runner, WorkerRunner):
        return
    _finish(environment)
    STATE.stop_emulator()
    if environment.parsed_options and environment.parsed_options.csv_prefix:
        # Locust's CSV writer refreshes its files every interval and does not write a last
        # time when it closes: let it run once more so the CSV holds every request.
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.1)


influx.install()
capacity.install()
