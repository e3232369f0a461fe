"""The aggregate's wire merge: what workers send their master adds up to one process's view."""

from __future__ import annotations

import json
import random

import pytest

from loadkit.aggregate import Aggregate
from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.summary import figures

MS = 1_000_000


def record(rng: random.Random, index: int) -> ResultRecord:
    model, speed = [("claude-haiku-4-5", "standard"), ("claude-opus-4-6", "fast")][index % 2]
    r = ResultRecord(model, speed, "t", 100, 200)
    r.t_send = (1_000 + index) * MS
    r.t_first_token = r.t_send + int(rng.lognormvariate(5, 0.5) * MS)
    tokens = rng.randint(2, 300)
    r.t_last_token = r.t_first_token + int(tokens / rng.uniform(50, 300) * 1e9)
    r.t_end = r.t_last_token + MS
    r.output_tokens, r.input_tokens = tokens, 100 + index % 7
    r.cost_usd = 1e-4 * (index % 5)
    if index % 11 == 0:
        r.attempts = [Attempt(speed, r.t_send, status=429, sent=True)]
        r.outcome, r.error_type, r.status = Outcome.RATE_LIMITED, "rate_limit_error", 429
    elif index % 13 == 0:
        r.attempts = [Attempt(speed, r.t_send, status=200, sent=True)]
        r.outcome = Outcome.CANCELLED
    else:
        r.attempts = [Attempt(speed, r.t_send, status=200, sent=True)]
        r.served_speed = speed
    return r


def test_workers_merged_on_the_master_equal_one_process() -> None:
    rng = random.Random(9)
    records = [record(rng, i) for i in range(3_000)]
    single, master = Aggregate(), Aggregate()
    workers = [Aggregate() for _ in range(3)]
    for i, r in enumerate(records):
        single.add(r, slices=[("window", i // 1000 * 5)])
        workers[i % 3].add(r, slices=[("window", i // 1000 * 5)])
        if i % 500 == 499:  # a report every few seconds: each takes what came since the last
            for worker in workers:
                master.merge_wire(json.loads(json.dumps(worker.take_wire())))
    for worker in workers:
        master.merge_wire(json.loads(json.dumps(worker.take_wire())))
    master.started_at = single.started_at
    master.ended_at = single.ended_at = single.started_at + 60
    (one_groups, one_total), (merged_groups, merged_total) = figures(single), figures(master)
    rows = zip([*one_groups, one_total], [*merged_groups, merged_total], strict=True)
    for group_a, group_b in rows:
        a, b = group_a.model_dump(exclude_unset=True), group_b.model_dump(exclude_unset=True)
        for key in ("requests", "ok", "failures", "cancelled", "rate_limited", "responses_429",
                    "output_tokens", "input_tokens", "outcomes", "attempt_outcomes"):  # fmt: skip
            assert a[key] == b[key], key
        assert a["cost_usd"] == pytest.approx(b["cost_usd"])
        for figure in ("ttft_ms", "otps", "e2e_ms"):
            for q, value in a[figure].items():
                assert b[figure][q] == pytest.approx(value, rel=1e-9), (figure, q)
    assert one_total.cancelled > 0 and one_total.rate_limited > 0
    assert set(master.slices("window")) == set(single.slices("window")) == {0, 5, 10}


def test_slos_are_judged_on_the_aggregate_scope_by_scope() -> None:
    from loadkit.slo import judge, meets_request_slos, parse_slos

    rng = random.Random(3)
    aggregate = Aggregate()
    records = [record(rng, i) for i in range(2_000)]
    for r in records:
        aggregate.add(r)
    aggregate.ended_at = aggregate.started_at + 100
    ttfts = sorted(r.ttft_ms for r in records if r.ttft_ms is not None)
    p50 = ttfts[len(ttfts) // 2]
    finished = [r for r in records if r.outcome is not Outcome.CANCELLED]
    error_rate = sum(not r.ok for r in finished) / len(finished)
    slos = parse_slos([
        f"ttft_p50_ms<={p50 * 1.05}", f"ttft_p50_ms<={p50 * 0.9}",
        f"error_rate<={error_rate + 0.001}", "model=claude-opus-4-6,speed=fast:otps_p50>=1",
        "model=claude-opus-4-6,speed=standard:otps_p50>=1",
    ])  # fmt: skip
    verdicts = judge(aggregate, slos)
    assert [v.passed for v in verdicts] == [True, False, True, True, False]
    assert verdicts[0].value == pytest.approx(p50, rel=0.02)  # the sketch's accuracy
    assert verdicts[2].value == pytest.approx(error_rate)  # cancellations left out
    assert verdicts[4].value is None and "FAIL" in verdicts[4].line()  # no such requests
    # goodput: a request meets every per-request threshold, and succeeded
    strict = parse_slos([f"ttft_p50_ms<={p50}"])
    good = [r for r in records if meets_request_slos(r, strict)]
    assert good and all(r.ok and (r.ttft_ms or 0) <= p50 for r in good)
