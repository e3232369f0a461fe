"""The workers of a distributed run as the master saw them: which reported to the end, which
were lost (killed, their host gone) and which went missing and came back (a partition healed).

What Locust does (2.x, ``locust/runners.py``): a worker sends a heartbeat every second; after
3 missed ones the master marks it ``missing`` and takes its users out of the count (with
``--enable-rebalancing`` it hands them to the other workers). A missing worker whose heartbeat
comes back is "self-healed": it is counted again, and the reports it queued while cut off
(ZeroMQ keeps them) arrive and are merged, so nothing it did is lost. One that never comes
back is dropped after 60 s more.

So loadkit's master: stops waiting for a missing worker's final report (the run ends on time),
keeps what each worker's last report said (the requests it had in flight then), and at the end
tells each worker's fate in the summary's ``workers`` section; the accounting then explains the
attempts the emulator received that no report carried (``accounting.py``).

This module imports nothing from Locust: it is given the runner's worker nodes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loadkit.accounting import Reconciliation
from loadkit.aggregate import UNSENT

IN_FLIGHT_KEY = "loadkit_in_flight"  # worker report: requests in flight, by "model speed"
MISSING = "missing"  # Locust's STATE_MISSING
LOCUST_BEHAVIOUR = (
    "Locust marks a worker missing after 3 missed heartbeats (~3 s) and takes its users out of "
    "the count (--enable-rebalancing hands them to the others); one whose heartbeat comes back "
    "rejoins and the reports it queued are merged; one that does not is lost, with what it had "
    "not reported"
)


class InFlight:
    """A worker's requests in flight (sent or being sent, not yet ended), by model x speed."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, model: str, speed: str) -> None:
        self.counts[f"{model} {speed}"] += 1

    def ended(self, model: str, speed: str) -> None:
        self.counts[f"{model} {speed}"] -= 1

    def snapshot(self) -> dict[str, int]:
        return {key: n for key, n in self.counts.items() if n > 0}


@dataclass
class WorkerSeen:
    """What the master knows of one worker."""

    worker: str  # Locust's client id (the worker's hostname and a random suffix)
    index: int | None = None
    reports: int = 0
    last_report_at: float | None = None  # time.time()
    requests_reported: int = 0  # requests ended, from its reports
    attempts_reported: int = 0  # attempts sent, from its reports (what the emulator received)
    in_flight: dict[str, int] = field(default_factory=dict)  # at its last report
    final: bool = False  # its final report (sent when its users stopped) arrived
    missing: list[list[float | None]] = field(default_factory=list)  # [since, until] time.time()

    @property
    def is_missing(self) -> bool:
        return bool(self.missing) and self.missing[-1][1] is None


def sent_attempts(wire: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(requests ended, attempts sent) in one worker report's aggregate."""
    requests = attempts = 0
    for item in wire:
        if "slice" in item or "schedule" in item:
            continue
        requests += item["totals"].get("requests", 0)
        attempts += sum(
            n for key, n in item["attempt_outcomes"].items() if not key.endswith("/" + UNSENT)
        )
    return requests, attempts


class Workers:
    """The master's view of its workers over one run."""

    def __init__(self) -> None:
        self.seen: dict[str, WorkerSeen] = {}
        self.started_at = time.time()

    def reset(self, started_at: float) -> None:
        self.seen = {}
        self.started_at = started_at

    def _worker(self, worker: str) -> WorkerSeen:
        found = self.seen.get(worker)
        if found is None:
            found = self.seen[worker] = WorkerSeen(worker)
        return found

    def report(self, worker: str, wire: list[dict[str, Any]], data: dict[str, Any]) -> None:
        """A worker's report arrived (``worker_report``)."""
        seen = self._worker(worker)
        requests, attempts = sent_attempts(wire)
        seen.reports += 1
        seen.last_report_at = time.time()
        seen.requests_reported += requests
        seen.attempts_reported += attempts
        seen.in_flight = dict(data.get(IN_FLIGHT_KEY) or {})

    def final(self, worker: str) -> None:
        self._worker(worker).final = True

    def watch(self, nodes: Iterable[Any], index_of: Any = None) -> None:
        """Note which workers are missing now (``nodes``: Locust's ``runner.clients.all``)."""
        now = time.time()
        for node in nodes:
            seen = self._worker(node.id)
            if seen.index is None and index_of is not None:
                seen.index = index_of(node.id)
            if node.state == MISSING and not seen.is_missing:
                seen.missing.append([now, None])
            elif node.state != MISSING and seen.is_missing:
                seen.missing[-1][1] = now

    def awaited(self, nodes: Iterable[Any]) -> set[str]:
        """Workers whose final report is still worth waiting for: not missing, not gone."""
        return {node.id for node in nodes if node.state != MISSING}

    def lost(self) -> list[WorkerSeen]:
        return [seen for seen in self.seen.values() if not seen.final]

    def section(self, reconciliation: Reconciliation | None) -> dict[str, Any]:
        """The summary's ``workers`` section (``results.WorkersSection``); ``reconciliation``:
        the accounting's, which explains what lost workers did not report."""

        def at(moment: float | None) -> float | None:
            return None if moment is None else round(moment - self.started_at, 3)

        rows = []
        for seen in sorted(self.seen.values(), key=lambda s: (s.index is None, s.index, s.worker)):
            if not seen.final:
                fate = "lost"
            elif seen.missing:
                fate = "rejoined"
            else:
                fate = "reported to the end"
            rows.append(
                {
                    "worker": seen.worker,
                    "index": seen.index,
                    "fate": fate,
                    "reports": seen.reports,
                    "last_report_s": at(seen.last_report_at),
                    "requests_reported": seen.requests_reported,
                    "attempts_reported": seen.attempts_reported,
                    "in_flight_at_last_report": sum(seen.in_flight.values()),
                    "missing_s": [[at(since), at(until)] for since, until in seen.missing],
                }
            )
        lost = [row for row in rows if row["fate"] == "lost"]
        section: dict[str, Any] = {
            "workers": rows,
            "lost": len(lost),
            "rejoined": sum(1 for row in rows if row["fate"] == "rejoined"),
            "locust_behaviour": LOCUST_BEHAVIOUR,
        }
        if lost and reconciliation is not None and not reconciliation.problems:
            section["unreported_attempts"] = reconciliation.unreported
            section["unanswered_by_outcome"] = {
                counter: n for counter, n in sorted(reconciliation.gone_as.items()) if n
            }
            section["cancelled_or_timed_out"] = reconciliation.gone
        return section


def describe(section: dict[str, Any]) -> list[str]:
    """Console lines for the workers section: nothing when every worker reported to the end."""
    lines = []
    for row in section["workers"]:
        if row["fate"] == "lost":
            lines.append(
                f"workers: LOST {row['worker']} (last report at {row['last_report_s']} s: "
                f"{row['in_flight_at_last_report']} requests in flight then; "
                f"{row['requests_reported']} requests reported before)"
            )
        elif row["fate"] == "rejoined":
            spells = ", ".join(f"{since}-{until} s" for since, until in row["missing_s"])
            lines.append(
                f"workers: {row['worker']} went missing ({spells}) and rejoined: "
                "its queued reports were merged"
            )
    if section.get("unreported_attempts") is not None:
        outcomes = ", ".join(
            f"{k} {v}" for k, v in sorted(section["unanswered_by_outcome"].items())
        )
        gone = section["cancelled_or_timed_out"]
        lines.append(
            f"workers: the emulator received {section['unreported_attempts']} attempts from lost "
            "workers that no report carried; it ended those"
            + (f" and the {gone} cancelled or timed out" if gone else "")
            + (f" as: {outcomes}" if outcomes else "")
        )
    return lines
