"""Locust event wiring: options, run preparation, worker reports, the end-of-run summary.

Each Locust ``Environment`` has one ``Run`` (``run.py``); at ``init`` every feature installs
its listeners on the environment's events for that run. Process roles: the local runner does
everything; in distributed runs the master validates the workload, starts the embedded
emulator if needed and sends its workers a ``RunPlan`` (under one ``parsed_options`` key);
the workers run the users and report their aggregates every few seconds; the master merges
them and prints the summary.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import signal
import time
from typing import Any, Literal

import gevent
from locust import events
from locust import stats as locust_stats
from locust.runners import STATE_INIT, STATE_STOPPED, STATE_STOPPING, MasterRunner, WorkerRunner
from pydantic import ValidationError

from loadkit.accounting import EmulatorCounters, Reconciliation, reconcile_lost
from loadkit.emulator.config import ConfigError, load_config
from loadkit.emulator.launcher import EmulatorProcess, EmulatorStartError
from loadkit.gctune import tune_gc
from loadkit.locust_plugin import (
    capacity,
    costguard,
    gates,
    influx,
    records,
    targets,
    trace_replay,
    webui,
)
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.meta import current_meta
from loadkit.locust_plugin.options import add_options, check_options
from loadkit.locust_plugin.run import (
    PLAN_KEY,
    Master,
    Role,
    Run,
    RunPlan,
    Worker,
    fallback_settings,
    load_workload_option,
    resolve_path,
    run_of,
)
from loadkit.locust_plugin.targets import TargetPolicy
from loadkit.locust_plugin.workers import IN_FLIGHT_KEY, describe
from loadkit.redact import redact_url
from loadkit.results import SCHEMA_VERSION, AccountingSection, RunSummary, WorkersSection
from loadkit.summary import (
    build_summary,
    format_table,
    unfitting_figures,
    write_summary,
    write_unfitting,
)
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


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    add_options(parser)
    targets.add_options(parser)
    influx.add_options(parser)
    capacity.add_options(parser)
    trace_replay.add_options(parser)


def _fail_run(run: Run, message: str) -> None:
    """A run that cannot start: say why, once, and end it with exit code 2."""
    say(f"loadkit: {message}")  # stderr, where Locust's log goes too, unless --logfile
    environment = run.environment
    options = environment.parsed_options
    if options is not None and getattr(options, "logfile", None):
        log.error("%s", message)
    run.refused = True
    environment.process_exit_code = 2
    runner = environment.runner
    if environment.parsed_options and environment.parsed_options.headless:
        gevent.spawn(runner.quit)
    else:
        gevent.spawn(runner.stop)


def _role(runner: Any) -> Role:
    if isinstance(runner, MasterRunner):
        return Master()
    return Worker() if isinstance(runner, WorkerRunner) else Role()


@events.init.add_listener
def _init(environment: Any, runner: Any, web_ui: Any = None, **_: Any) -> None:
    tune_gc()  # full collections would stall every stream of the process (and its timings)
    # Locust's Runner.stop() calls inspect.stack() for a debug line. The first call in a
    # process scans every loaded module's source file (~200 ms with ~4,000 modules), holding
    # the hub while streams are in flight: their last tokens would arrive in one burst,
    # inflating the timings of the requests that end at the stop. One call now, before any
    # stream, fills inspect's caches (later calls: ~0.1 ms).
    inspect.stack()
    # CPU-heavy imports (and the two calls above) leave gevent's cached clock behind; without
    # this, -t ends early. Last, so that nothing after it is slow.
    gevent.get_hub().loop.update_now()
    run = run_of(environment)
    run.role = _role(runner)
    run.interrupted_by = ""
    install(environment.events, run)
    influx.install(environment.events, run)
    records.install(environment.events, run)
    costguard.install(environment.events, run)
    trace_replay.install(runner, run)
    # SIGTERM is told apart from Ctrl-C by this; Locust's own handler quits the run.
    gevent.signal_handler(signal.SIGTERM, _record_sigterm, run)
    # Ctrl-C: Python raises KeyboardInterrupt in whichever greenlet happens to run, which can
    # be a user's, deep in a stream (seen: the interrupt lost, the run going on to -t).
    # Taken here instead, and thrown where Locust waits for it: its main greenlet.
    gevent.signal_handler(signal.SIGINT, _on_sigint, run)
    if web_ui is not None:
        webui.install(web_ui, run)
    if run.role.reports:
        runner.register_message(STOP_MESSAGE, lambda msg, **_: _stop_and_report(run))
        return
    if environment.parsed_options is None:
        return
    run.targets = TargetPolicy.at_start(environment.parsed_options, environment.host)
    try:  # fail fast, before anything starts, on a bad workload or emulator config
        load_workload_option(environment.parsed_options.workload)
        if environment.parsed_options.emulator_config:
            load_config(resolve_path(environment.parsed_options.emulator_config))
    except (WorkloadError, ConfigError) as err:
        _fail_run(run, str(err))
        # A headless run quits now, but Locust starts it all the same: test_start must not
        # load the file again (and say the same thing a second time).
        run.refused_at_init = bool(environment.parsed_options.headless)


def _given_target(run: Run) -> str:
    """The target the operator named (option, Locust's host, environment), or ""."""
    environment = run.environment
    host = environment.host or ""
    if run.emulator is not None and host.rstrip("/") == run.emulator.base_url:
        host = ""  # set by loadkit to the embedded emulator, not given
    given = run.options.target_url or host or os.environ.get("ANTHROPIC_BASE_URL", "")
    return str(given).rstrip("/")


def _target(run: Run) -> tuple[str, Literal["emulator", "real"], str]:
    """The run's target, the key it gets and the embedded emulator's URL ("" if given)."""
    given = _given_target(run)
    if given:
        policy = run.targets or TargetPolicy(frozenset())
        key_kind = policy.key_for(given)  # raises TargetRefused
        run.environment.host = given
        return given, key_kind, ""
    if run.emulator is None:
        options = run.options
        config_path = resolve_path(options.emulator_config) if options.emulator_config else None
        run.emulator = EmulatorProcess(config_path=config_path)
        run.emulator.start()
        log.info("loadkit: started the embedded emulator at %s", run.emulator.base_url)
    run.environment.host = run.emulator.base_url  # Locust's own views name the target
    return run.emulator.base_url, "emulator", run.emulator.base_url


def _plan_the_run(run: Run) -> RunPlan:
    """On the master (or local runner) at each start: check everything, decide the plan."""
    options = run.options
    check_options(options)  # values from the web form skip argparse's checks
    workload = load_workload_option(options.workload)
    run.fallback_settings = fallback_settings(workload, options)
    trace_replay.prepare_master(run, workload)  # raises TraceError naming the line and field
    target, key_kind, embedded_url = _target(run)
    # (before anything reaches the target: a remote one needs a spending cap)
    started, cost_cap, users = capacity.prepare_master(run, workload.slos, target, key_kind)
    # When the target is a loadkit emulator, its counters are reconciled at the end.
    counters = EmulatorCounters(target)
    run.emulator_counters = counters if counters.available else None
    plan = RunPlan(
        run_id=time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3),
        target=target,
        key_kind=key_kind,
        embedded_url=embedded_url,
        workload=workload.model_dump(mode="json", by_alias=True),
        workload_slos=tuple(workload.slos),
        run_start=started,
        sweep_start=started,
        cost_cap_per_process=cost_cap,
        users_total=users,
    )
    log.info(
        "loadkit run %s: workload %s, target %s", plan.run_id, workload.name, redact_url(target)
    )
    return plan


def _test_start(run: Run) -> None:
    options = run.options
    run.finished = run.stopped = False
    run.stopping_at = 0
    run.aggregate.reset()
    run.refused = False
    run.plan = None
    if run.role.collects:
        run.workers.reset(run.aggregate.started_at)
        gevent.spawn(_watch_workers, run)
    if run.refused_at_init:
        run.refused = True
        return
    if run.role.decides:
        setattr(options, PLAN_KEY, None)  # a refused start sends its workers no stale plan
        try:
            plan = _plan_the_run(run)
        except (WorkloadError, ConfigError, EmulatorStartError, ValueError) as err:
            _fail_run(run, str(err))
            return
        plan.to_options(options)
    else:
        try:
            found = RunPlan.from_options(options)
        except ValueError as err:
            _fail_run(run, str(err))
            return
        if found is None:  # the master refused this start and said why
            run.refused = True
            return
        plan = found
    run.plan = plan
    run.run_id = plan.run_id
    run.budget_stopping = False
    try:
        capacity.prepare_process(run, plan)
    except ValueError as err:
        _fail_run(run, str(err))
        return
    if not run.role.sends:
        return
    try:
        run.prepare(options, plan)
        trace_replay.prepare_process(run)
    except Exception as err:  # calibration against an unreachable target, a missing key...
        run.close_client()
        _fail_run(run, f"cannot prepare the run: {err}")


def _test_stopping(run: Run) -> None:
    # open-loop schedules end here: starts due after this are not owed
    run.stopping_at = time.perf_counter_ns()


def _report(run: Run, data: dict[str, Any]) -> None:
    data[WIRE_KEY] = run.aggregate.take_wire()
    data[FINAL_KEY] = run.stopped
    data[IN_FLIGHT_KEY] = run.in_flight.snapshot()


def _worker_report(run: Run, client_id: str, data: dict[str, Any]) -> None:
    wire = data.get(WIRE_KEY) or []
    run.workers.report(client_id, wire, data)
    run.aggregate.merge_wire(wire)
    if data.get(FINAL_KEY):
        run.final_reports.add(client_id)
        run.workers.final(client_id)


def _watch_workers(run: Run) -> None:
    """Master: note the workers Locust marks missing (and back), until the run's end."""
    runner = run.environment.runner
    while not run.finished:
        run.workers.watch(runner.clients.all, runner.get_worker_index)
        gevent.sleep(0.5)


# Locust's master, when a headless run ends, gives its workers 0.5 s to send their last
# report before it stops listening, and a worker needs longer than that to cut its streams
# when it runs many users: its last seconds (and its cancelled requests) would be lost. So
# the master first asks every worker to stop and report, and waits for those reports.
def _stop_and_report(run: Run) -> None:
    runner = run.environment.runner
    runner.stop()  # cuts the streams (reported as cancelled); test_stop closes the sinks
    run.stopped = True
    runner._send_stats()  # the report Locust sends on quit, sent now (a private method)


def _collect_final_reports(run: Run) -> None:
    """Ask every worker to stop and report; wait for those that are not missing (a missing
    worker, killed or cut off, would hold the run's end for nothing: it is reported lost)."""
    runner = run.environment.runner
    nodes = runner.clients
    expected = {client.id for client in nodes.all}
    run.final_reports.clear()
    for client_id in expected:
        runner.send_message(STOP_MESSAGE, None, client_id)
    deadline = time.monotonic() + FINAL_REPORT_TIMEOUT_S
    while time.monotonic() < deadline:
        run.workers.watch(nodes.all, runner.get_worker_index)
        if not (expected & run.workers.awaited(nodes.all)) - run.final_reports:
            break
        gevent.sleep(0.05)
    missing = expected - run.final_reports
    if missing:
        log.warning(
            "loadkit: no final report from %s: its last requests are missing (see the summary's "
            "workers section)",
            ", ".join(sorted(missing)),
        )


def _accounting(
    run: Run, lost_workers: int
) -> tuple[AccountingSection | None, Reconciliation | None]:
    counters = run.emulator_counters
    if counters is None:
        return None, None
    try:
        return reconcile_lost(run.aggregate, counters, lost_workers)
    except Exception as err:  # the target died or stopped answering: say so, write the rest
        reason = f"{type(err).__name__}: {err}"
        say(f"accounting: unavailable: {reason}")
        return AccountingSection(available=False, reason=reason, mismatches=[]), None


def _end_checks(run: Run, summary: RunSummary) -> tuple[list[str], RunSummary]:
    breaches: list[str] = []
    for check in run.end_checks:
        try:
            found, summary = check(run, summary)
            breaches.extend(found)
        except Exception as err:
            log.exception("loadkit: an end check failed")
            breaches.append(f"the check {check.__name__} could not run: {type(err).__name__}")
    for line in breaches:
        say(f"BREACH: {line}")
    return breaches, summary.model_copy(update={"breaches": breaches})


def _exit_code(
    run: Run, summary: RunSummary, breaches: list[str] | None, slo_breaches: list[str]
) -> tuple[int | None, str]:
    """The run's exit code and its one-line reason (None: Locust's own decides).

    In order: 5 no request completed, 3 a scenario check failed or requests are unaccounted
    for, 4 an SLO was breached, 6 the InfluxDB sink delivered nothing; else 0 when checks or
    SLOs judged the run and passed. A run interrupted (SIGINT/SIGTERM) exits 130/143 unless
    a check or an SLO failed (3, 4): what it did not complete, it was not let complete.
    """
    total = summary.total
    gate: tuple[int, str] | None = None
    if breaches:
        gate = EXIT_BREACH, f"{len(breaches)} end check(s) failed"
    elif summary.accounting is not None and summary.accounting.mismatches:
        gate = EXIT_BREACH, "requests are unaccounted for (see accounting above)"
    elif slo_breaches:
        gate = gates.EXIT_SLO, f"{len(slo_breaches)} SLO(s) breached"
    if run.interrupted_by:
        return gate or (EXIT_SIGNAL[run.interrupted_by], f"interrupted by {run.interrupted_by}")
    if run.aggregate.total().totals["requests"] and not total.ok:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(total.failures_by_type.items()))
        return EXIT_NOTHING_COMPLETED, (
            f"no request completed: {total.failures} failed"
            + (f" ({kinds})" if kinds else "")
            + f", {total.cancelled} cancelled"
        )
    if gate is not None:
        return gate
    sink = summary.influxdb
    optional = run.options.influxdb_optional
    if sink is not None and not sink.written and not optional:
        why = sink.rejection or f"{sink.dropped} points dropped"
        return EXIT_SINK, f"the InfluxDB sink delivered nothing ({why}; see --influxdb-optional)"
    if breaches is not None or summary.slos is not None:
        return 0, ""  # judged by its checks or SLOs: expected failures (429s) do not fail it
    return None, ""


def _build_summary(run: Run) -> RunSummary | None:
    """The run's summary, built once from its aggregate; None (with the figures written as
    they are, and the problem logged) if they do not fit the schema: a defect, but nothing
    is lost."""
    try:
        return build_summary(
            run.aggregate,
            run.run_id,
            current_meta(run),
            run.fallback_settings,
            run.dataset_names,
        )
    except ValidationError as err:
        log.error("loadkit: the results do not fit schema version %d: %s", SCHEMA_VERSION, err)
        if run.options.summary_json:
            write_unfitting(unfitting_figures(run.aggregate, run.run_id), run.options.summary_json)
        return None


def _finish(run: Run) -> None:
    """Print the summary and write every output once per run, on the local runner or master.

    The summary is built once from the aggregate, then each step adds its section and every
    output reads it. Each output is written even when another could not be: a dead target
    makes accounting unavailable, it does not lose the summary.
    """
    environment = run.environment
    if run.finished or not run.role.decides or not run.run_id:
        return
    run.finished = True
    run.aggregate.ended_at = run.aggregate.ended_at or time.time()
    summary = _build_summary(run)
    if summary is None:
        return
    sections: dict[str, Any] = {}
    if run.interrupted_by:
        sections["interrupted_by"] = run.interrupted_by
    say("\n" + format_table(summary))
    lost = len(run.workers.lost()) if run.role.collects else 0
    accounting, reconciliation = _accounting(run, lost)
    if accounting is not None:
        sections["accounting"] = accounting
    if run.role.collects:
        workers = WorkersSection.model_validate(run.workers.section(reconciliation))
        sections["workers"] = workers
        for line in describe(workers.model_dump()):
            say(line)
    sink = influx.summary(run)
    if sink is not None:
        sections["influxdb"] = sink
        say(
            f"influxdb: {sink.written} points written, {sink.dropped} dropped "
            f"({sink.rejected} refused by the server), {sink.failed_writes} failed "
            "writes retried" + (f"; last refusal: {sink.rejection}" if sink.rejection else "")
        )
    summary = summary.model_copy(update=sections)
    breaches: list[str] | None = None
    if run.end_checks:
        breaches, summary = _end_checks(run, summary)
    try:
        summary, verdicts = gates.measure(run, summary)
        slo_breaches = gates.publish(run, summary, verdicts)
    except Exception as err:
        log.exception("loadkit: the SLO verdicts, JUnit or report could not be written")
        slo_breaches = [f"the SLO verdicts could not be written: {type(err).__name__}"]
    code, reason = _exit_code(run, summary, breaches, slo_breaches)
    if code is not None and environment.process_exit_code in (None, 0):
        environment.process_exit_code = code
        update: dict[str, Any] = {"exit_code": code}
        if reason:
            update["exit_reason"] = reason
            say(f"loadkit: exit code {code}: {reason}")
        summary = summary.model_copy(update=update)
    say("")
    path = run.options.summary_json
    if path:
        write_summary(summary, path)
        say(f"loadkit: summary written to {path}")


def _test_stop(run: Run) -> None:
    if not run.role.decides:
        return
    run.aggregate.ended_at = time.time()
    if run.role.collects:
        _collect_final_reports(run)
    if not run.options.headless:
        _finish(run)  # headless: at quitting, once the runner is done


def _record_sigterm(run: Run) -> None:
    run.interrupted_by = "SIGTERM"


def _on_sigint(run: Run) -> None:
    run.interrupted_by = run.interrupted_by or "SIGINT"
    gevent.get_hub().parent.throw(KeyboardInterrupt)


def _quitting(run: Run) -> None:
    runner = run.environment.runner
    gevent.sleep(0)  # let a signal's recorder run (Locust's handler may have run first)
    running = runner is not None and runner.state not in (STATE_INIT, STATE_STOPPED, STATE_STOPPING)
    if running and not run.refused:
        # Interrupted (Ctrl-C, SIGTERM) while running: Locust quits after this listener, so
        # stop sending now, honouring --stop-timeout, and build the outputs after that. (Only
        # signals quit a running run: -t, the cost guard and a failed start stop it first.)
        run.interrupted_by = run.interrupted_by or "SIGINT"
        say(f"loadkit: {run.interrupted_by}: stopping the run before writing its results")
        if run.role.reports:
            _stop_and_report(run)  # its last requests reach the master
        else:
            runner.stop()
    run.close_client()
    if not run.role.decides:
        return
    _finish(run)
    run.stop_emulator()
    if run.options and run.options.csv_prefix:
        # Locust's CSV writer refreshes its files every interval and does not write a last
        # time when it closes: let it run once more so the CSV holds every request.
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.1)


def install(events: Any, run: Run) -> None:
    """The run's own listeners: its start, worker reports, its end and outputs."""
    events.test_start.add_listener(lambda **_: _test_start(run))
    events.test_stopping.add_listener(lambda **_: _test_stopping(run))
    events.report_to_master.add_listener(lambda client_id, data, **_: _report(run, data))
    events.worker_report.add_listener(
        lambda client_id, data, **_: _worker_report(run, client_id, data)
    )
    events.test_stop.add_listener(lambda **_: _test_stop(run))
    events.quitting.add_listener(lambda **_: _quitting(run))
