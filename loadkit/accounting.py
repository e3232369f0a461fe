"""Reconcile the harness's counts with the emulator's: every attempt sent must be seen there.

Harness outcome -> emulator counter. A timeout or cancellation is a client that went away;
when it goes away after the server wrote its last byte, the server has counted the request
completed. So ``completed`` and ``client_closed`` are checked together: the harness's ok
requests can be no more than the server's completed ones, and ok + cancelled + timed out
must equal completed + client_closed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import httpx2

from loadkit.aggregate import UNSENT, Aggregate

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
            if outcome == UNSENT:
                continue
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


def reconcile(aggregate: Aggregate, theirs: Counter[tuple[str, str, str]]) -> list[str]:
    """Differences between the two sides, one line each; empty when every attempt agrees.

    ``theirs`` is what the emulator counted during the run (``emulator_counts`` of its stats
    at the end minus those at the start).
    """
    ours = harness_counts(aggregate)
    problems = []
    pairs = {(model, speed) for model, speed, _ in set(ours) | set(theirs)}
    for model, speed in sorted(pairs):
        for counter in ("received", *sorted(set(EMULATOR_COUNTER.values()))):
            key = (model, speed, counter)
            if counter in ("completed", "client_closed") or ours[key] == theirs[key]:
                continue
            problems.append(
                f"{model} {speed} {counter}: harness {ours[key]}, emulator {theirs[key]}"
            )
        ok, done = ours[(model, speed, "completed")], theirs[(model, speed, "completed")]
        gone = ours[(model, speed, "client_closed")]
        closed = theirs[(model, speed, "client_closed")]
        if ok > done or ok + gone != done + closed:
            problems.append(
                f"{model} {speed} completed/client_closed: harness {ok}/{gone}, "
                f"emulator {done}/{closed}"
            )
    return problems


def sent_attempts(aggregate: Aggregate) -> int:
    return sum(
        n for (_, _, counter), n in harness_counts(aggregate).items() if counter == "received"
    )


class EmulatorCounters:
    """The counters of a target that is a loadkit emulator, read at the start and the end."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.baseline: dict[str, Any] | None = self._stats()

    def _stats(self) -> dict[str, Any] | None:
        try:
            response = httpx2.get(f"{self.base_url}/_emulator/stats", timeout=5)
            data = response.json() if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) and "by_model_speed" in data else None

    @property
    def available(self) -> bool:
        return self.baseline is not None

    def during_run(self, settle_s: float = 5.0) -> Counter[tuple[str, str, str]]:
        """What the emulator counted since the start, once the run's streams have settled."""
        assert self.baseline is not None
        before = self.baseline["totals"]["in_flight"]
        deadline = time.monotonic() + settle_s
        end = self._stats()
        while end is not None and end["totals"]["in_flight"] > before:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)  # cut streams reach the emulator a moment later
            end = self._stats()
        if end is None:
            raise RuntimeError(f"the emulator at {self.base_url} stopped answering")
        return emulator_counts(end) - emulator_counts(self.baseline)


def reconcile_run(aggregate: Aggregate, counters: EmulatorCounters) -> dict[str, Any]:
    """Compare every attempt the harness made with what the emulator counted meanwhile.

    Prints the verdict (to stderr: stdout belongs to Locust) and returns the summary's
    ``accounting`` section.
    """
    theirs = counters.during_run()
    problems = reconcile(aggregate, theirs)
    received = sum(n for (_, _, counter), n in theirs.items() if counter == "received")
    if problems:
        print("accounting: the harness and the emulator disagree:", file=sys.stderr, flush=True)
        for line in problems:
            print(f"  {line}", file=sys.stderr, flush=True)
    else:
        print(
            f"accounting: all {received} attempts match the emulator's counters",
            file=sys.stderr,
            flush=True,
        )
    return {
        "emulator_received": received,
        "harness_sent": sent_attempts(aggregate),
        "mismatches": problems,
    }
