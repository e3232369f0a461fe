"""The fast-mode fallback validation scenario: its mid-run limit change and its end checks.

``enable()`` (called by ``locustfiles/fast_fallback.py``) adds the options, a driver that
relaxes the emulator's fast-mode limit at ``--recover-at`` seconds, and the checks run on the
master at the end; any breach makes the run exit with code 3:

1. every request is accounted for: the harness's attempts equal the emulator's counters
   (when the target is an emulator; against the real API this check is skipped, with a note);
2. fast-mode 429s were actually provoked (else the run proves nothing): 429s whose headers
   show fast mode's limit exhausted, not the acceleration limit's (``loadkit.ratelimit_cause``);
3. every 429 answer's limit was told (the count by limit is printed);
4. no request broke its policy (see ``loadkit.fallback_checks``);
5. retry amplification (attempts per request) stays under the policy's bound, plus one attempt
   per 429 that was not fast mode's (the acceleration limit's, a standard limit's: the SDK
   retries those after retry-after, which no policy can avoid);
6. no retry storm after the limit recovers: no fast-mode-limit 429 once ``--storm-grace``
   seconds have passed since the recovery, while traffic goes on (the acceleration limit's
   429s are not the fast limit's: they are left out).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import gevent
import httpx2
from locust import events

from loadkit.accounting import emulator_counts
from loadkit.locust_plugin.console import say
from loadkit.locust_plugin.run import Recovery, Run, run_of
from loadkit.results import RunSummary, ValidationCheck, ValidationSection

log = logging.getLogger("loadkit")
RECOVERED_LIMIT_PER_MINUTE = 1e12
RECOVERY_JOIN_S = 15.0
# The emulator's control token, if it requires one (the same variable the emulator reads).
CONTROL_TOKEN_ENV = "LOADKIT_EMULATOR_CONTROL_TOKEN"
SCENARIO_WORKLOAD = "workloads/fast-fallback.yaml"
SCENARIO_EMULATOR_CONFIG = "workloads/emulator/fast-fallback.yaml"


def _add_options(parser: Any, **_: Any) -> None:
    parser.add_argument(
        "--recover-at",
        type=float,
        default=0.0,
        help="Seconds into the run at which the emulator's fast-mode limit is lifted (0: never)",
    )
    parser.add_argument(
        "--storm-grace",
        type=float,
        default=3.0,
        help="Seconds after the recovery before any fast 429 counts as a retry storm",
    )


def _stats(target: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx2.get(f"{target}/_emulator/stats", timeout=10).json()
    return stats


def _drive_recovery(recovery: Recovery, target: str, recover_at: float, grace: float) -> None:
    gevent.sleep(recover_at)
    patch = {
        "fast_mode": {
            "input_tokens_per_minute": RECOVERED_LIMIT_PER_MINUTE,
            "output_tokens_per_minute": RECOVERED_LIMIT_PER_MINUTE,
        }
    }
    try:
        token = os.environ.get(CONTROL_TOKEN_ENV, "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        httpx2.post(
            f"{target}/_emulator/config", json=patch, headers=headers, timeout=10
        ).raise_for_status()
        recovery.recovered_at = time.time()
        log.info("loadkit: fast-mode limit lifted at %.1f s", recover_at)
        gevent.sleep(grace)
        recovery.baseline = _stats(target)
    except (httpx2.HTTPError, ValueError) as err:
        recovery.error = f"{type(err).__name__}: {err}"
        log.error("loadkit: the fast-mode limit could not be lifted: %s", recovery.error)


def _test_start(run: Run) -> None:
    if not run.role.decides:
        return
    recovery = run.recovery
    if recovery.greenlet is not None:
        recovery.greenlet.kill(block=False)
    recovery.baseline = recovery.recovered_at = None
    recovery.error = ""
    recovery.started_at = time.time()
    options = run.options
    target = run.plan.target if run.plan is not None else ""
    if options.recover_at > 0 and target and run.emulator_counters is not None:
        recovery.greenlet = gevent.spawn(
            _drive_recovery, recovery, target, options.recover_at, options.storm_grace
        )


FAST_LIMIT_CAUSES = ("fast/fast_input_tokens", "fast/fast_output_tokens")


def _fast_limit_429s(stats: dict[str, Any]) -> int:
    """Fast requests the emulator refused for fast mode's limit (not for acceleration)."""
    return sum(
        row["rate_limited"] - row.get("acceleration_limited", 0)
        for row in stats["by_model_speed"]
        if row["speed"] == "fast"
    )


def check(run: Run, summary: RunSummary) -> tuple[list[str], RunSummary]:
    """Run the end checks; print one PASS/FAIL line per check with its measured value.
    Returns the breaches and the summary with its ``validation`` section."""
    results: list[tuple[str, bool, str]] = []  # (check, passed, what was measured)
    total = summary.total
    accounting = summary.accounting
    if accounting is None:
        say("note: the target is not a loadkit emulator: accounting not checked")
    elif not accounting.available:
        results.append(("accounting", False, f"unavailable: {accounting.reason}"))
    else:
        mismatches = accounting.mismatches
        results.append(
            (
                "accounting",
                not mismatches,
                f"{accounting.harness_sent} attempts sent, {accounting.emulator_received} "
                f"received by the emulator"
                + (": " + "; ".join(mismatches) if mismatches else ", every outcome matches"),
            )
        )
    causes = total.responses_429_by_cause
    fast_429s = sum(causes.get(cause, 0) for cause in FAST_LIMIT_CAUSES)
    results.append(
        (
            "fast-mode 429s provoked",
            fast_429s > 0,
            f"{fast_429s} fast attempts answered 429 for fast mode's limit"
            + ("" if fast_429s else ": the scenario proved nothing"),
        )
    )
    told = sum(causes.values())
    results.append(
        (
            "429s told apart",
            told == total.responses_429,
            f"{told} of {total.responses_429} 429 answers by limit: "
            + (", ".join(f"{cause} {n}" for cause, n in causes.items()) or "none"),
        )
    )
    policy = summary.policy
    if policy is None:
        raise ValueError("the fallback validation ran without a fallback policy")
    violations = total.fallback.violations
    results.append(
        (
            f"policy {policy.policy} followed",
            not violations,
            ", ".join(f"{kind} ({count} requests)" for kind, count in violations.items())
            or "0 violations",
        )
    )
    amplification = policy.amplification or 0
    other_429s = told - fast_429s
    requests = total.requests + total.cancelled
    bound = policy.amplification_bound + (round(other_429s / requests, 4) if requests else 0)
    results.append(
        (
            "retry amplification",
            amplification <= bound,
            f"{amplification} attempts per request, bound {bound} "
            f"({policy.amplification_bound} + {other_429s} other 429s retried)",
        )
    )
    target = run.plan.target if run.plan is not None else ""
    recovery = run.recovery
    if run.options.recover_at > 0:
        if recovery.greenlet is not None and recovery.baseline is None and not recovery.error:
            recovery.greenlet.join(timeout=RECOVERY_JOIN_S)  # its last request may be slow
        if recovery.baseline is None:
            lifted = (
                f"the limit was lifted {recovery.recovered_at - recovery.started_at:.1f} s in"
                if recovery.recovered_at is not None
                else "the limit was never lifted"
            )
            why = recovery.error or (
                f"the run ended before the recovery and its grace period ({lifted})"
            )
            results.append(("no retry storm", False, why))
        else:
            latest = _stats(target)
            after = emulator_counts(latest) - emulator_counts(recovery.baseline)
            storm = _fast_limit_429s(latest) - _fast_limit_429s(recovery.baseline)
            received = sum(n for (_, _, counter), n in after.items() if counter == "received")
            results.append(
                (
                    "no retry storm",
                    not storm,
                    f"{storm} fast-mode-limit 429s after the limit recovered",
                )
            )
            results.append(
                (
                    "traffic after the recovery",
                    received > 0,
                    f"{received} attempts after the grace period"
                    + ("" if received else ": the storm check proved nothing"),
                )
            )
    for name, passed, measured in results:
        say(f"{'PASS' if passed else 'FAIL'} {name}: {measured}")
    breaches = [f"{name}: {measured}" for name, passed, measured in results if not passed]
    section = ValidationSection(
        breaches=len(breaches),
        fast_429_attempts=fast_429s,
        checks=[
            ValidationCheck(check=name, passed=passed, measured=measured)
            for name, passed, measured in results
        ],
    )
    return breaches, summary.model_copy(update={"validation": section})


def _scenario_defaults(parser: Any, **_: Any) -> None:
    # The scenario runs as it stands: its own workload and emulator config (options override).
    parser.set_defaults(workload=SCENARIO_WORKLOAD, emulator_config=SCENARIO_EMULATOR_CONFIG)


def enable() -> None:
    """Turn a locustfile into the fast-mode fallback validation scenario."""
    events.init_command_line_parser.add_listener(_add_options)
    events.init_command_line_parser.add_listener(_scenario_defaults)
    events.init.add_listener(_install)


def _install(environment: Any, **_: Any) -> None:
    # (after the run's own listeners: loadkit's init listener was added when LLMUser was
    # imported, before the locustfile called enable())
    run = run_of(environment)
    environment.events.test_start.add_listener(lambda **_: _test_start(run))
    run.end_checks.append(check)
