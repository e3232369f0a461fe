"""Reconcile the harness's counts with the emulator's: every attempt sent must be seen there.

Each attempt the harness sent (wrote in full) ends at the emulator in exactly one counter
(``EMULATOR_COUNTER`` maps the harness's outcomes to them). Two kinds of attempt:

- known: the harness read the server's answer (ok, 429, 529, 500, an error event, a cut...).
  The emulator must have counted at least as many of each as the harness did.
- gone: the harness stopped waiting before it could read the answer (``cancelled`` by the
  run's end, ``timeout``). The server may have seen the client leave (``client_closed``),
  but it may also have answered first: a 429 written just before the run's end kills the
  greenlet that was about to read it, a stream whose last byte was on the wire... Any
  counter can hold them, so the harness cannot say which.

So, per model x speed, the invariants checked are:

- received: the emulator received exactly the attempts the harness sent;
- for every counter but ``client_closed``, harness (known) <= emulator;
- the emulator's excess over the known outcomes, summed over all its counters
  (``client_closed`` included), equals the harness's gone attempts exactly.

Anything else is a real loss or a wrong outcome and is reported as a mismatch; the gone
attempts the server had answered are reported by what it answered, not as mismatches.

A distributed run that lost workers (killed, cut off: ``locust_plugin/workers.py``) lacks
what they did after their last report: the emulator received more than the harness sent.
Those are the lost workers' unreported attempts, and the invariants become:

- received: the emulator received at least the attempts the harness sent; the difference is
  the lost workers' unreported attempts (``unreported``);
- for every counter but ``client_closed``, harness (known) <= emulator;
- the emulator's excess over the known outcomes, summed over all its counters, equals the
  gone attempts plus the unreported ones exactly (``gone_as`` then says how the emulator ended
  both; with no gone attempt, how it ended the lost workers' requests).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx2

from loadkit.aggregate import UNSENT, Aggregate
from loadkit.catalog import canonical_model
from loadkit.results import AccountingSection

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
#: The emulator's counter for an attempt whose client left before reading its answer; the
#: harness counts its gone attempts (cancelled, timed out) there too.
GONE = "client_closed"
#: Every counter an emulator request ends in, in report order.
COUNTERS = tuple(sorted(set(EMULATOR_COUNTER.values())))


def harness_counts(aggregate: Aggregate) -> Counter[tuple[str, str, str]]:
    """(model, speed, emulator counter) -> attempts, from the harness's side.

    ``client_closed`` holds the harness's gone attempts (cancelled or timed out), whatever
    the emulator made of them; ``received`` holds every attempt sent.
    """
    counts: Counter[tuple[str, str, str]] = Counter()
    for (requested_model, _requested), group in aggregate.groups.items():
        model = canonical_model(requested_model)  # the emulator counts a dated ID as its alias
        for key, n in group.attempt_outcomes.items():
            speed, outcome = key.split("/", 1)
            if outcome == UNSENT:
                continue
            counts[(model, speed, EMULATOR_COUNTER.get(outcome, outcome))] += n
            counts[(model, speed, "received")] += n
    return counts


def emulator_counts(stats: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    """(model, speed, counter) -> requests, from an ``/_emulator/stats`` snapshot.

    ``received`` counts requests received, the other counters those that ended there (a
    request still in flight is in ``received`` only).
    """
    counts: Counter[tuple[str, str, str]] = Counter()
    for row in stats["by_model_speed"]:
        model, speed = row["model"], row["speed"]
        for outcome in COUNTERS:
            if outcome == "invalid+unauthorized":
                value = row["invalid"] + row["unauthorized"]
            else:
                value = row[outcome]
            if value:
                counts[(model, speed, outcome)] += value
        counts[(model, speed, "received")] += row["received"]
    return counts


@dataclass
class Reconciliation:
    """The comparison of both sides: mismatches, and what became of the gone attempts."""

    problems: list[str] = field(default_factory=list)
    gone: int = 0  # attempts the harness sent and stopped waiting for (cancelled, timeout)
    unreported: int = 0  # lost workers: attempts the emulator received that no report carried
    # emulator counter -> how many of the gone attempts it counted there (client_closed:
    # it saw the client leave; any other: it had answered before the client left)
    gone_as: Counter[str] = field(default_factory=Counter)

    @property
    def answered(self) -> dict[str, int]:
        """The gone attempts the server had answered, by its outcome."""
        return {name: n for name, n in sorted(self.gone_as.items()) if name != GONE and n}


def compare(
    ours: Counter[tuple[str, str, str]],
    theirs: Counter[tuple[str, str, str]],
    lost_workers: bool = False,
) -> Reconciliation:
    """Check the invariants (see the module's docstring) per model x speed; with
    ``lost_workers``, the emulator may have received attempts that no report carried."""
    result = Reconciliation()
    pairs = {(model, speed) for model, speed, _ in set(ours) | set(theirs)}
    for model, speed in sorted(pairs):
        problems = []
        name = f"{model} {speed}"
        sent, received = ours[(model, speed, "received")], theirs[(model, speed, "received")]
        unreported = received - sent if lost_workers and received > sent else 0
        if sent + unreported != received:
            problems.append(f"{name} received: harness sent {sent}, emulator received {received}")
        gone = ours[(model, speed, GONE)]
        excess: Counter[str] = Counter()
        for counter in COUNTERS:
            known = 0 if counter == GONE else ours[(model, speed, counter)]
            counted = theirs[(model, speed, counter)]
            if known > counted:
                problems.append(f"{name} {counter}: harness {known}, emulator {counted}")
            elif counted > known:
                excess[counter] = counted - known
        if sum(excess.values()) != gone + unreported:
            ended = sum(theirs[(model, speed, c)] for c in COUNTERS)
            in_flight = received - ended
            beyond = ", ".join(
                f"{counter} {theirs[(model, speed, counter)]} (harness "
                f"{0 if counter == GONE else ours[(model, speed, counter)]})"
                for counter in sorted(excess)
            )
            problems.append(
                f"{name}: {gone} attempts cancelled or timed out"
                + (f" and {unreported} unreported by lost workers" if unreported else "")
                + ", but the emulator counted "
                f"{sum(excess.values())} outcomes beyond the harness's known ones"
                + (f": {beyond}" if beyond else "")
                + (f"; {in_flight} still in flight there" if in_flight else "")
            )
        result.gone += gone
        result.unreported += unreported
        if not problems:
            result.gone_as.update(excess)
        result.problems.extend(problems)
    return result


def reconcile(aggregate: Aggregate, theirs: Counter[tuple[str, str, str]]) -> list[str]:
    """Differences between the two sides, one line each; empty when every attempt agrees.

    ``theirs`` is what the emulator counted during the run (``emulator_counts`` of its stats
    at the end minus those at the start).
    """
    return compare(harness_counts(aggregate), theirs).problems


def sent_attempts(aggregate: Aggregate) -> int:
    return sum(
        n for (_, _, counter), n in harness_counts(aggregate).items() if counter == "received"
    )


def _settled(ours: Counter[tuple[str, str, str]], theirs: Counter[tuple[str, str, str]]) -> bool:
    """Every attempt the harness sent has reached the emulator and ended there."""
    for model, speed, counter in ours:
        if counter != "received":
            continue
        sent = ours[(model, speed, counter)]
        ended = sum(theirs[(model, speed, c)] for c in COUNTERS)
        if theirs[(model, speed, "received")] < sent or ended < sent:
            return False
    return True


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

    def during_run(
        self, ours: Counter[tuple[str, str, str]] | None = None, settle_s: float = 5.0
    ) -> Counter[tuple[str, str, str]]:
        """What the emulator counted since the start, once the run's attempts have settled.

        The harness's last requests reach the emulator a moment after the harness gave up on
        them: a request written just before its greenlet was killed, then its socket closed,
        is received, and the close seen, only when the emulator's loop gets to them, maybe
        after it answered this read. So with ``ours`` (the harness's counts) this waits
        until the emulator has received, and ended, every attempt the harness sent; without,
        until its requests in flight are back to their number at the start. At most
        ``settle_s``: a real loss never settles, and is then reported as it stands.
        """
        assert self.baseline is not None
        start = emulator_counts(self.baseline)
        before = self.baseline["totals"]["in_flight"]
        deadline = time.monotonic() + settle_s
        while True:
            end = self._stats()
            if end is None:
                raise RuntimeError(f"the emulator at {self.base_url} stopped answering")
            theirs = emulator_counts(end) - start
            if ours is not None:
                done = _settled(ours, theirs) and end["totals"]["in_flight"] <= before
            else:
                done = end["totals"]["in_flight"] <= before
            if done or time.monotonic() > deadline:
                return theirs
            time.sleep(0.02)


def _explanation(result: Reconciliation) -> str:
    """What became of the attempts the harness stopped waiting for, or ""."""
    if not result.gone:
        return ""
    closed = result.gone_as.get(GONE, 0)
    parts = [f"saw {closed} closed by the client"] if closed else []
    answered = result.answered
    if answered:
        parts.append(
            "had already answered "
            + ", ".join(f"{n} as {counter}" for counter, n in answered.items())
        )
    return (
        f" ({result.gone} cancelled or timed out before their answer was read: "
        f"the emulator {' and '.join(parts)})"
    )


def reconcile_run(aggregate: Aggregate, counters: EmulatorCounters) -> AccountingSection:
    """Compare every attempt the harness made with what the emulator counted meanwhile.

    Prints the verdict (to stderr: stdout belongs to Locust) and returns the summary's
    ``accounting`` section.
    """
    return reconcile_lost(aggregate, counters, 0)[0]


def reconcile_lost(
    aggregate: Aggregate, counters: EmulatorCounters, lost_workers: int
) -> tuple[AccountingSection, Reconciliation]:
    """``reconcile_run`` of a run that lost ``lost_workers`` workers: the attempts the emulator
    received from them that no report carried are explained (``Reconciliation.unreported``,
    ended as ``gone_as`` says), not mismatches."""
    ours = harness_counts(aggregate)
    theirs = counters.during_run(ours)
    result = compare(ours, theirs, lost_workers=lost_workers > 0)
    received = sum(n for (_, _, counter), n in theirs.items() if counter == "received")
    sent = sum(n for (_, _, counter), n in ours.items() if counter == "received")
    if result.problems:
        print("accounting: the harness and the emulator disagree:", file=sys.stderr, flush=True)
        for line in result.problems:
            print(f"  {line}", file=sys.stderr, flush=True)
    elif result.unreported:
        print(
            f"accounting: the emulator received {received} attempts: {sent} match the harness's "
            f"reports, {result.unreported} were sent by {lost_workers} lost worker(s) after "
            "their last report" + _lost_explanation(result),
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"accounting: all {received} attempts match the emulator's counters"
            + _explanation(result),
            file=sys.stderr,
            flush=True,
        )
    section = AccountingSection(
        emulator_received=received,
        harness_sent=sent,
        mismatches=result.problems,
        # attempts the harness stopped waiting for (cancelled, timed out), and what the
        # emulator made of them: closed by the client, or answered (by outcome) before that
        cancelled_or_timed_out=result.gone,
        cancelled_closed_by_client=result.gone_as.get(GONE, 0),
        cancelled_answered_as=dict(result.answered),
    )
    return section, result


def _lost_explanation(result: Reconciliation) -> str:
    """How the emulator ended the attempts the harness has no answer for."""
    ended = ", ".join(f"{n} {counter}" for counter, n in sorted(result.gone_as.items()) if n)
    gone = f" and the {result.gone} cancelled or timed out" if result.gone else ""
    return f" (the emulator ended those{gone} as: {ended})"
