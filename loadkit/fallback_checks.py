"""Checks that a run's requests followed their fallback policy (the launch-validation job).

Per request (``record_violations``): under ``standard``, a fast 429 is followed by exactly one
standard attempt (more only when a standard attempt itself failed with a retryable error),
and a successful answer was served at standard speed; under ``retry`` and
``retry-then-standard``, no retry at the same speed went out sooner than the ``retry-after``
it was given. Per run (``amplification_bound``): attempts per request stay under a bound.
"""

from __future__ import annotations

import itertools

from loadkit.fallback import FallbackSettings
from loadkit.record import Outcome, ResultRecord

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
# Retry-after is honoured if the wait is at most this much shorter (clock granularity).
WAIT_TOLERANCE_S = 0.002


def amplification_bound(settings: FallbackSettings) -> float:
    """Most attempts per request, on average over a run, that a correct policy can make.

    none: 1. retry: 1 + max_retries. standard: 2 (the fast attempt and its fallback), plus
    what transient errors add (they are reported separately). retry-then-standard: the fast
    attempt, its waits, and the fallback: 2 + max_retries.
    """
    return {
        "none": 1.0,
        "retry": 1.0 + settings.max_retries,
        "standard": 2.0,
        "retry-then-standard": 2.0 + settings.max_retries,
    }[settings.policy]


def record_violations(record: ResultRecord, settings: FallbackSettings) -> list[str]:
    if record.outcome is Outcome.CANCELLED:
        return []  # cut short by the end of the run: it could not finish its policy
    problems: list[str] = []
    attempts = record.attempts
    policy = settings.policy
    if policy in ("retry", "retry-then-standard"):
        for previous, attempt in itertools.pairwise(attempts):
            wait = previous.retry_after_s
            if (
                wait is not None
                and attempt.speed == previous.speed
                and attempt.waited_s + WAIT_TOLERANCE_S < wait
            ):
                problems.append("retry sooner than retry-after")
    if policy in ("standard", "retry-then-standard"):
        for i, attempt in enumerate(attempts):
            if attempt.speed != "fast" or attempt.status != 429:
                continue
            later = attempts[i + 1 :]
            if policy == "retry-then-standard" and later and later[0].speed == "fast":
                continue  # it waited and retried fast; the wait is checked above
            if not later or later[0].speed != "standard":
                problems.append("fast 429 not followed by a standard attempt")
                continue
            standard = [a for a in later if a.speed == "standard"]
            retried = sum(1 for a in standard[:-1] if a.status in RETRYABLE_STATUS)
            if len(standard) != 1 + retried:
                problems.append("fast 429 followed by more than one standard attempt")
        if record.ok and record.fell_back and record.served_speed != "standard":
            problems.append("fallback not served at standard speed")
    return problems
