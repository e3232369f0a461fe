"""Reconcile the harness's counts with the emulator's: every attempt sent must be seen there.

Harness outcome -> emulator counter. A timeout or cancellation is a client that went away.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from loadkit.aggregate import Aggregate

EMULATOR_COUNTER = {
    "ok": "completed",
    "rate_limited": "rate_limited",
    "overloaded": "overloaded",
    "api_error": "api_error",
    "stream_error": "midstream_error",
    "connection_error": "cut",
    "cancelled": "client_closed",
    "timeout": "client_closed",
    "client_error": "invalid+unauthorized",
}


def harness_counts(aggregate: Aggregate) -> Counter[tuple[str, str, str]]:
    """(model, speed, emulator counter) -> attempts, from the harness's side."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for (model, _requested), group in aggregate.groups.items():
        for key, n in group.attempt_outcomes.items():
            speed, outcome = key.split("/", 1)
            counts[(model, speed, EMULATOR_COUNTER.get(outcome, outcome))] += n
            counts[(model, speed, "received")] += n
    return counts


def emulator_counts(stats: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for row in stats["by_model_speed"]:
        model, speed = row["model"], row["speed"]
        for outcome in set(EMULATOR_COUNTER.values()):
            if outcome == "invalid+unauthorized":
                value = row["invalid"] + row["unauthorized"]
            else:
                value = row[outcome]
            if value:
                counts[(model, speed, outcome)] += value
        counts[(model, speed, "received")] += row["received"]
    return counts


def reconcile(aggregate: Aggregate, stats: dict[str, Any]) -> list[str]:
    """Differences between the two sides, one line each; empty when every attempt agrees."""
    ours, theirs = harness_counts(aggregate), emulator_counts(stats)
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if ours[key] != theirs[key]:
            model, speed, counter = key
            problems.append(
                f"{model} {speed} {counter}: harness {ours[key]}, emulator {theirs[key]}"
            )
    return problems
