"""The master's view of its workers (``loadkit/locust_plugin/workers.py``) and the accounting of
a run that lost some: unit tests, no Locust (the multi-host runs are in test_multihost.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from loadkit.accounting import compare
from loadkit.locust_plugin.workers import IN_FLIGHT_KEY, InFlight, Workers, describe
from loadkit.results import WorkersSection

KEY = ("claude-haiku-4-5", "standard")


def counts(**by_counter: int) -> Counter[tuple[str, str, str]]:
    return Counter({(*KEY, counter): n for counter, n in by_counter.items()})


def test_lost_workers_unreported_attempts_are_explained_exactly() -> None:
    ours = counts(received=100, completed=100)
    theirs = counts(received=107, completed=105, client_closed=2)
    # without lost workers: a mismatch
    assert compare(ours, theirs).problems
    result = compare(ours, theirs, lost_workers=True)
    assert result.problems == []
    assert result.unreported == 7
    assert dict(result.gone_as) == {"completed": 5, "client_closed": 2}


def test_lost_workers_do_not_excuse_a_real_loss() -> None:
    # the harness says it sent more than the emulator received: never explained by a lost worker
    assert compare(
        counts(received=10, completed=10), counts(received=9, completed=9), True
    ).problems
    # an outcome the harness knows that the emulator did not count
    ours = counts(received=10, completed=8, rate_limited=2)
    theirs = counts(received=12, completed=12)
    assert compare(ours, theirs, lost_workers=True).problems
    # received more, but some of those never ended at the emulator
    assert compare(
        counts(received=10, completed=10), counts(received=12, completed=11), True
    ).problems


@dataclass
class Node:
    id: str
    state: str


def wire(requests: int, attempts: int) -> list[dict[str, object]]:
    return [
        {
            "model": KEY[0],
            "speed": KEY[1],
            "totals": {"requests": requests},
            "attempt_outcomes": {"standard/ok": attempts, "standard/unsent": 1},
        }
    ]


def test_workers_fates_and_section() -> None:
    workers = Workers()
    workers.reset(1000.0)
    nodes = [Node("w1_a", "running"), Node("w2_b", "running"), Node("w3_c", "running")]
    workers.watch(nodes, lambda worker: int(worker[1]))
    for node in nodes:
        workers.report(node.id, wire(10, 11), {IN_FLIGHT_KEY: {"claude-haiku-4-5 standard": 2}})
    nodes[1].state = nodes[2].state = "missing"
    workers.watch(nodes)
    assert workers.awaited(nodes) == {"w1_a"}
    nodes[2].state = "running"  # came back
    workers.watch(nodes)
    for worker in ("w1_a", "w3_c"):
        workers.report(worker, wire(1, 1), {IN_FLIGHT_KEY: {}})
        workers.final(worker)
    assert [seen.worker for seen in workers.lost()] == ["w2_b"]
    ours = counts(received=35, completed=35)
    theirs = counts(received=40, completed=38, client_closed=2)
    section = WorkersSection.model_validate(
        workers.section(compare(ours, theirs, lost_workers=True))
    )
    fates = {row.worker: row for row in section.workers}
    assert [row.index for row in section.workers] == [1, 2, 3]
    assert fates["w1_a"].fate == "reported to the end" and fates["w1_a"].missing_s == []
    assert fates["w2_b"].fate == "lost" and fates["w2_b"].in_flight_at_last_report == 2
    assert fates["w2_b"].attempts_reported == 11 and fates["w2_b"].requests_reported == 10
    assert fates["w3_c"].fate == "rejoined" and fates["w3_c"].missing_s[0][1] is not None
    assert (section.lost, section.rejoined) == (1, 1)
    assert section.unreported_attempts == 5
    assert section.unanswered_by_outcome == {"client_closed": 2, "completed": 3}
    lines = "\n".join(describe(section.model_dump()))
    assert "LOST w2_b" in lines and "2 requests in flight" in lines
    assert "w3_c went missing" in lines and "5 attempts from lost workers" in lines


def test_in_flight_counts_requests_not_yet_ended() -> None:
    in_flight = InFlight()
    in_flight.started("claude-haiku-4-5", "standard")
    in_flight.started("claude-haiku-4-5", "standard")
    in_flight.started("claude-opus-4-6", "fast")
    in_flight.ended("claude-opus-4-6", "fast")
    assert in_flight.snapshot() == {"claude-haiku-4-5 standard": 2}
