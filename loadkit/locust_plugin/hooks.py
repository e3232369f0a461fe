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
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
from locust import events
from locust import stats as locust_stats
from locust.runners import STATE_INIT, STATE_STOPPED, STATE_STOPPING, MasterRunner, WorkerRunner

from loadkit.accounting import EmulatorCounters, reconcile_run
from loadkit.emulator.config import ConfigError, load_config
from loadkit.emulator.launcher import EmulatorProcess, EmulatorStartError
from loadkit.gctune import tune_gc
from loadkit.locust_plugin import capacity, influx, targets, webui
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.meta import current_meta
from loadkit.locust_plugin.options import add_options, check_options
from loadkit.locust_plugin.state import (
    STATE,
    fallback_settings,
    load_workload_option,
    resolve_path,
)
from loadkit.locust_plugin.targets import TargetPolicy
from loadkit.redact import redact_url
from loadkit.summary import format_table, summary_data, write_summary
from loadkit.workload import WorkloadError

log = logging.getLogger("loadkit")
# httpx logs every request at INFO, which Locust's logging shows: far too much in a load test.
for _chatty in ("httpx2", "httpcore2", "httpx", "httpcore"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)
WIRE_KEY = "loadkit"
FINAL_KEY = "loadkit_final"
STOP_MESSAGE = "loadkit_stop_and_report"
FINAL_REPORT_TIMEOUT_S = 20.0
EXIT_BREACH = 3  # a scenario's end-of-run check failed, or requests are unaccounted for
EXIT_NOTHING_COMPLETED = 5
EXIT_SINK = 6
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}
#: Scenario checks run at the end on the master: (environment, summary data) -> breaches.
END_CHECKS: list[Callable[[Any, dict[str, Any]], list[str]]] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    add_options(parser)
    targets.add_options(parser)
    influx.add_options(parser)
    capacity.add_options(parser)


def _fail_run(environment: Any, message: str) -> None:
    """A run that cannot start: say why, once, and end it with exit code 2."""
    say(f"loadkit: {message}")  # stderr, where Locust's log goes too, unless --logfile
    options = environment.parsed_options
    if options is not None and getattr(options, "logfile", None):
        log.error("%s", message)
    STATE.refused = True
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
    STATE.interrupted_by = ""
    # SIGTERM is told apart from Ctrl-C by this; Locust's own handler quits the run.
    gevent.signal_handler(signal.SIGTERM, _record_sigterm)
    # Ctrl-C: Python raises KeyboardInterrupt in whichever greenlet happens to run, which can
    # be a user's, deep in a stream (seen: the interrupt lost, the run going on to -t).
    # Taken here instead, and thrown where Locust waits for it: its main greenlet.
    gevent.signal_handler(signal.SIGINT, _on_sigint)
    if web_ui is not None:
        webui.install(web_ui)
    if isinstance(runner, WorkerRunner):
        runner.register_message(STOP_MESSAGE, _stop_and_report)
        return
    if environment.parsed_options is None:
        return
    STATE.targets = TargetPolicy.at_start(environment.parsed_options, environment.host)
    try:  # fail fast, before anything starts, on a bad workload or emulator config
        load_workload_option(environment.parsed_options.workload)
        if environment.parsed_options.emulator_config:
            load_config(resolve_path(environment.parsed_options.emulator_config))
    except (WorkloadError, ConfigError) as err:
        _fail_run(environment, str(err))
        # A headless run quits now, but Locust starts it all the same: test_start must not
        # load the file again (and say the same thing a second time).
        STATE.refused_at_init = bool(environment.parsed_options.headless)


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
        policy = STATE.targets or TargetPolicy(frozenset())
        options.loadkit_key_kind = policy.key_for(given)  # raises TargetRefused
        environment.host = given
        return given
    if STATE.emulator is None:
        config_path = resolve_path(options.emulator_config) if options.emulator_config else None
        STATE.emulator = EmulatorProcess(config_path=config_path)
        STATE.emulator.start()
        log.info("loadkit: started the embedded emulator at %s", STATE.emulator.base_url)
    options.loadkit_embedded_url = STATE.emulator.base_url
    options.loadkit_key_kind = "emulator"
    environment.host = STATE.emulator.base_url  # Locust's own views name the target
    return STATE.emulator.base_url


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    runner = environment.runner
    STATE.finished = STATE.stopped = False
    STATE.stopping_at = 0
    STATE.aggregate.reset()
    STATE.refused = False
    if STATE.refused_at_init:
        STATE.refused = True
        return
    if not isinstance(runner, WorkerRunner):
        try:
            check_options(options)  # values from the web form skip argparse's checks
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
            redact_url(options.loadkit_target),
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


def _accounting(data: dict[str, Any]) -> None:
    counters = STATE.emulator_counters
    if counters is None:
        return
    try:
        data["accounting"] = reconcile_run(STATE.aggregate, counters)
    except Exception as err:  # the target died or stopped answering: say so, write the rest
        reason = f"{type(err).__name__}: {err}"
        data["accounting"] = {"available": False, "reason": reason, "mismatches": []}
        say(f"accounting: unavailable: {reason}")


def _end_checks(environment: Any, data: dict[str, Any]) -> list[str]:
    breaches: list[str] = []
    for check in END_CHECKS:
        try:
            breaches.extend(check(environment, data))
        except Exception as err:
            log.exception("loadkit: an end check failed")
            breaches.append(f"the check {check.__name__} could not run: {type(err).__name__}")
    data["breaches"] = breaches
    for line in breaches:
        say(f"BREACH: {line}")
    return breaches


def _exit_code(
    environment: Any, data: dict[str, Any], breaches: list[str] | None, slo_breaches: list[str]
) -> tuple[int | None, str]:
    """The run's exit code and its one-line reason (None: Locust's own decides).

    In order: 5 no request completed, 3 a scenario check failed or requests are unaccounted
    for, 4 an SLO was breached, 6 the InfluxDB sink delivered nothing; else 0 when checks or
    SLOs judged the run and passed. A run interrupted (SIGINT/SIGTERM) exits 130/143 unless
    a check or an SLO failed (3, 4): what it did not complete, it was not let complete.
    """
    total = data["total"]
    gate: tuple[int, str] | None = None
    if breaches:
        gate = EXIT_BREACH, f"{len(breaches)} end check(s) failed"
    elif data.get("accounting", {}).get("mismatches"):
        gate = EXIT_BREACH, "requests are unaccounted for (see accounting above)"
    elif slo_breaches:
        gate = capacity.EXIT_SLO, f"{len(slo_breaches)} SLO(s) breached"
    if STATE.interrupted_by:
        return gate or (EXIT_SIGNAL[STATE.interrupted_by], f"interrupted by {STATE.interrupted_by}")
    if STATE.aggregate.total().totals["requests"] and not total["ok"]:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(total["failures_by_type"].items()))
        return EXIT_NOTHING_COMPLETED, (
            f"no request completed: {total['failures']} failed"
            + (f" ({kinds})" if kinds else "")
            + f", {total['cancelled']} cancelled"
        )
    if gate is not None:
        return gate
    sink = data.get("influxdb")
    optional = environment.parsed_options.influxdb_optional
    if sink is not None and not sink["written"] and not optional:
        why = sink.get("rejection") or f"{sink['dropped']} points dropped"
        return EXIT_SINK, f"the InfluxDB sink delivered nothing ({why}; see --influxdb-optional)"
    if breaches is not None or "slos" in data:
        return 0, ""  # judged by its checks or SLOs: expected failures (429s) do not fail it
    return None, ""


def _finish(environment: Any) -> None:
    """Print the summary and write every output once per run, on the local runner or master.

    Each output is written even when another could not be: a dead target makes accounting
    unavailable, it does not lose the summary.
    """
    if STATE.finished or isinstance(environment.runner, WorkerRunner) or not STATE.run_id:
        return
    STATE.finished = True
    STATE.aggregate.ended_at = STATE.aggregate.ended_at or time.time()
    data = summary_data(
        STATE.aggregate, STATE.run_id, current_meta(environment), STATE.fallback_settings
    )
    if STATE.interrupted_by:
        data["interrupted_by"] = STATE.interrupted_by
    say("\n" + format_table(data))
    _accounting(data)
    sink = influx.summary()
    if sink is not None:
        data["influxdb"] = sink
        say(
            f"influxdb: {sink['written']} points written, {sink['dropped']} dropped "
            f"({sink['rejected']} refused by the server), {sink['failed_writes']} failed "
            "writes retried" + (f"; last refusal: {sink['rejection']}" if sink["rejection"] else "")
        )
    breaches = _end_checks(environment, data) if END_CHECKS else None
    try:
        slo_breaches = capacity.finish(environment, STATE.aggregate, data)
    except Exception as err:
        log.exception("loadkit: the SLO verdicts, JUnit or report could not be written")
        slo_breaches = [f"the SLO verdicts could not be written: {type(err).__name__}"]
    code, reason = _exit_code(environment, data, breaches, slo_breaches)
    if code is not None and environment.process_exit_code in (None, 0):
        environment.process_exit_code = code
        data["exit_code"] = code
        if reason:
            data["exit_reason"] = reason
            say(f"loadkit: exit code {code}: {reason}")
    say("")
    path = environment.parsed_options.summary_json
    if path:
        problem = write_summary(data, path)
        if problem:
            log.error("loadkit: %s", problem)
        say(f"loadkit: summary written to {path}")


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    STATE.aggregate.ended_at = time.time()
    if isinstance(runner, MasterRunner):
        _collect_final_reports(environment)
    if not environment.parsed_options.headless:
        _finish(environment)  # headless: at quitting, once the runner is done


def _record_sigterm() -> None:
    STATE.interrupted_by = "SIGTERM"


def _on_sigint() -> None:
    STATE.interrupted_by = STATE.interrupted_by or "SIGINT"
    gevent.get_hub().parent.throw(KeyboardInterrupt)


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    runner = environment.runner
    gevent.sleep(0)  # let a signal's recorder run (Locust's handler may have run first)
    running = runner is not None and runner.state not in (STATE_INIT, STATE_STOPPED, STATE_STOPPING)
    if running and not STATE.refused:
        # Interrupted (Ctrl-C, SIGTERM) while running: Locust quits after this listener, so
        # stop sending now, honouring --stop-timeout, and build the outputs after that. (Only
        # signals quit a running run: -t, the cost guard and a failed start stop it first.)
        STATE.interrupted_by = STATE.interrupted_by or "SIGINT"
        say(f"loadkit: {STATE.interrupted_by}: stopping the run before writing its results")
        if isinstance(runner, WorkerRunner):
            _stop_and_report(environment, None)  # its last requests reach the master
        else:
            runner.stop()
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
