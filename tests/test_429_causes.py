"""429 answers counted by the limit that caused them, per model x speed, across workers.

The causes themselves come from each 429's headers (``loadkit.ratelimit_cause``; through the
SDK in tests/test_acceleration.py). Here: workers' counts merge on the master (``take_wire``
/ ``merge_wire``) and the results schema carries them (``responses_429_by_cause``).
"""

from __future__ import annotations

import json

from loadkit.aggregate import Aggregate
from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.results import GroupFigures
from loadkit.summary import finite, group_figures


def _record(*causes: tuple[str, str]) -> ResultRecord:
    """A request whose attempts were answered 429 for ``causes`` (speed, cause), then 200."""
    record = ResultRecord("claude-opus-4-6", "fast", "t", 500, 128, outcome=Outcome.OK)
    record.attempts = [
        Attempt(speed, 1, status=429, rate_limit_cause=cause, sent=True) for speed, cause in causes
    ]
    record.attempts.append(Attempt("standard", 2, status=200, sent=True))
    return record


def test_worker_counts_merge_on_the_master() -> None:
    """A 429 "describing which rate limit was exceeded" (rate limits page, "Rate limits"),
    counted by that limit on each worker, adds up on the master."""
    workers = [Aggregate(), Aggregate()]
    workers[0].add(_record(("fast", "fast_input_tokens")))
    workers[0].add(_record(("fast", "acceleration"), ("standard", "acceleration")))
    workers[1].add(_record(("fast", "fast_input_tokens")))
    master = Aggregate()
    for worker in workers:
        master.merge_wire(json.loads(json.dumps(worker.take_wire())))
    group = master.groups[("claude-opus-4-6", "fast")]
    assert dict(group.causes_429) == {
        "fast/fast_input_tokens": 2,
        "fast/acceleration": 1,
        "standard/acceleration": 1,
    }
    assert group.totals["responses_429"] == 4
    assert not workers[0].groups  # taken: the next report starts afresh


def test_the_figures_carry_429s_by_limit() -> None:
    """Per model x speed, as the results schema types them (the printed line under the
    table is checked on a real run in tests/test_fallback.py). Rate limits page, "Rate
    limits": each per-minute limit and the acceleration limit answer 429."""
    aggregate = Aggregate()
    aggregate.add(_record(("fast", "fast_output_tokens"), ("standard", "acceleration")))
    figures = group_figures(aggregate.groups[("claude-opus-4-6", "fast")], 1.0)
    assert figures["responses_429_by_cause"] == {
        "fast/fast_output_tokens": 1,
        "standard/acceleration": 1,
    }
    assert GroupFigures.model_validate(finite(figures)).responses_429_by_cause == {
        "fast/fast_output_tokens": 1,
        "standard/acceleration": 1,
    }
