"""The fast-mode fallback validation scenario: its mid-run limit change and its end checks.

``enable()`` (called by ``locustfiles/fast_fallback.py``) adds the options, a driver that
relaxes the emulator's fast-mode limit at ``--recover-at`` seconds, and the checks run on the
master at the end; any breach makes the run exit with code 3:

1. every request is accounted for: the harness's attempts equal the emulator's counters
   (when the target is an emulator; against the real API this check is skipped, with a note);
2. fast-mode 429s were actually provoked (else the run proves nothing);
3. no request broke its policy (see ``loadkit.fallback_checks``);
4. retry amplification (attempts per request) stays under the policy's bound;
5. no retry storm after the limit recovers: no fast 429 once ``--storm-grace`` seconds have
   passed since the recovery, while traffic goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import httpx2
from locust import events
from locust.runners import WorkerRunner

from loadkit.accounting import emulator_counts
from loadkit.locust_plugin import hooks
from loadkit.locust_plugin.state import STATE

log = logging.getLogger("loadkit")
RECOVERED_LIMIT_PER_MINUTE = 1e12


class _Recovery:
    def __init__(self) -> None:
        self.greenlet: gevent.Greenlet | None = None
        self.baseline: dict[str, Any] | None = None  # emulator stats after the grace period
        self.recovered_at: float | None = None


RECOVERY = _Recovery()


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
    return httpx2.get(f"{target}/_emulator/stats", timeout=10).json()


def _drive_recovery(target: str, recover_at: float, grace: float) -> None:
    gevent.sleep(recover_at)
    patch = {
        "fast_mode": {
            "input_tokens_per_minute": RECOVERED_LIMIT_PER_MINUTE,
            "output_tokens_per_minute": RECOVERED_LIMIT_PER_MINUTE,
        }
    }
    httpx2.post(f"{target}/_emulator/config", json=patch, timeout=10).raise_for_status()
    RECOVERY.recovered_at = time.time()
    log.info("loadkit: fast-mode limit lifted at %.1f s", recover_at)
    gevent.sleep(grace)
    RECOVERY.baseline = _stats(target)


def _test_start(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    if RECOVERY.greenlet is not None:
        RECOVERY.greenlet.kill(block=False)
    RECOVERY.baseline = RECOVERY.recovered_at = None
    options = environment.parsed_options
    target = getattr(options, "loadkit_target", "")
    if options.recover_at > 0 and target and STATE.emulator_counters is not None:
        RECOVERY.greenlet = gevent.spawn(
            _drive_recovery, target, options.recover_at, options.storm_grace
        )


def _fast_429s(counts: Any) -> int:
    return sum(
        n
        for (_, speed, counter), n in counts.items()
        if (speed, counter) == ("fast", "rate_limited")
    )


def check(environment: Any, data: dict[str, Any]) -> list[str]:
    breaches: list[str] = []
    total = data["total"]
    accounting = data.get("accounting")
    if accounting is None:
        print("note: the target is not a loadkit emulator: accounting not checked", flush=True)
    elif accounting["mismatches"]:
        breaches.extend(f"accounting: {line}" for line in accounting["mismatches"])
    fast_429s = total["attempt_outcomes"].get("fast/rate_limited", 0)
    if not fast_429s:
        breaches.append("no fast-mode 429 was provoked: the scenario proved nothing")
    for kind, count in total["fallback"]["violations"].items():
        breaches.append(f"policy {data['policy']['policy']}: {kind} ({count} requests)")
    policy = data["policy"]
    if (policy["amplification"] or 0) > policy["amplification_bound"]:
        breaches.append(
            f"retry amplification {policy['amplification']} attempts per request is over "
            f"the bound {policy['amplification_bound']}"
        )
    target = getattr(environment.parsed_options, "loadkit_target", "")
    if environment.parsed_options.recover_at > 0:
        if RECOVERY.baseline is None:
            breaches.append("the run ended before the recovery and its grace period")
        else:
            after = emulator_counts(_stats(target)) - emulator_counts(RECOVERY.baseline)
            storm = _fast_429s(after)
            if storm:
                breaches.append(f"retry storm: {storm} fast 429s after the limit recovered")
            if not any(counter == "received" and n for (_, _, counter), n in after.items()):
                breaches.append("no traffic after the recovery: the storm check proved nothing")
    data["validation"] = {"breaches": len(breaches), "fast_429_attempts": fast_429s}
    return breaches


def enable() -> None:
    """Turn a locustfile into the fast-mode fallback validation scenario."""
    events.init_command_line_parser.add_listener(_add_options)
    events.test_start.add_listener(_test_start)
    hooks.END_CHECKS.append(check)
