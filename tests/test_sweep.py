"""The sweep's verdicts on hand-built steps: the knee, no knee (a lower bound), holding the load,
and who fell behind (the load generator or the target)."""

from __future__ import annotations

import pytest

from loadkit.aggregate import Aggregate
from loadkit.record import Outcome, ResultRecord
from loadkit.report import render_report
from loadkit.results import Knee, RunMeta, Versions
from loadkit.sketch import Sketch
from loadkit.slo import parse_slos
from loadkit.summary import build_summary
from loadkit.sweep import SweepPlan, analyse, cut_allowance, format_sweep, share_above, step_row

HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-6"
# 10, 20, 30 req/s for 10 s each: 100, 200, 300 requests due
PLAN = SweepPlan("rate", 10, 10, 10, 30)
SLOS = parse_slos(["ttft_p95_ms<=1000", "error_rate<=0.5"])
META = RunMeta(
    started_at="2026-11-30T00:00:00+00:00", workload="hand-built", workload_sha256="0" * 64,
    target="http://127.0.0.1:1", target_kind="emulator", users=None, spawn_rate=None,
    run_time_s=None, arrival="sweep rate 10..30 step 10", processes=1, http_stack="none",
    versions=Versions(loadkit="0", locust=None, anthropic=None, python="3.11"), git_commit=None,
)  # fmt: skip


def record(
    outcome: Outcome = Outcome.OK,
    queue_ms: float = 0.5,
    ttft_ms: float = 100.0,
    e2e_ms: float = 200.0,
    model: str = HAIKU,
) -> ResultRecord:
    """A request meant to start at 1 s (perf_counter ns), sent ``queue_ms`` later."""
    intended = 1_000_000_000
    send = intended + int(queue_ms * 1e6)
    rec = ResultRecord(
        model=model, speed="standard", scenario="test", prompt_tokens_target=100, max_tokens=20,
        t_intended=intended, t_send=send, outcome=outcome,
    )  # fmt: skip
    if outcome is Outcome.OK:
        rec.t_first_token = send + int(ttft_ms * 1e6)
        rec.t_last_token = rec.t_end = send + int(e2e_ms * 1e6)
        rec.output_tokens = 20
    elif outcome is Outcome.CANCELLED:
        rec.t_end = send + int(e2e_ms * 1e6)
        rec.error_type = "cancelled"
    else:
        rec.status, rec.error_type = 529, "overloaded_error"
        rec.t_end = send + int(ttft_ms * 1e6)
    return rec


def add(aggregate: Aggregate, step: int, count: int, **kwargs: object) -> None:
    for _ in range(count):
        aggregate.add(record(**kwargs), slices=[("step", step)])  # type: ignore[arg-type]


def healthy(steps: int = 2) -> Aggregate:
    """Steps 0..steps-1 that held their load with room to spare (a few cut at the end)."""
    aggregate = Aggregate()
    for index in range(steps):
        add(aggregate, index, int(PLAN.load(index) * PLAN.step_duration_s))
    return aggregate


def test_knee_found_when_a_step_breaks_an_slo() -> None:
    aggregate = healthy()
    add(aggregate, 2, 300, ttft_ms=2500, e2e_ms=2600)  # every request held, but slow
    result = analyse(PLAN, aggregate, SLOS, completed=3)
    assert result.capacity == 20 and result.knee_found
    assert result.knee == Knee(step=2, offered=30, reason="broke ttft_p95_ms<=1000")
    assert result.capacity_lower_bound is None
    rows = result.steps
    assert [r.met for r in rows] == [True, True, False]
    assert rows[2].holds_load and not rows[2].met_slos
    text = format_sweep(result)
    assert "capacity: 20 req/s offered (knee at 30 req/s offered: broke ttft_p95_ms<=1000)" in text
    assert "no knee" not in text
    assert result.capacity_by_group == {f"{HAIKU} standard": 20}
    assert result.knee_found_by_group == {f"{HAIKU} standard": True}


def test_no_knee_when_every_step_held_is_a_lower_bound() -> None:
    aggregate = healthy(3)
    result = analyse(PLAN, aggregate, SLOS, completed=3)
    assert result.capacity == 30 and not result.knee_found and result.knee is None
    assert result.capacity_lower_bound == 30
    assert all(r.met and r.holds_load and r.fell_behind is None for r in result.steps)
    text = format_sweep(result)
    assert "no knee found: capacity >= 30 req/s offered" in text
    assert "raise --sweep-stop" in text and "\ncapacity:" not in text
    assert f"{HAIKU} standard: >= 30 (no knee)" in text
    assert result.knee_found_by_group == {f"{HAIKU} standard": False}


def test_a_step_the_target_cannot_sustain_is_not_capacity_even_with_slos_met() -> None:
    # The run: the top step offered 30 req/s; its starts went out on time but only
    # 2/3 of them were answered by the end of the run, the rest still queued and cut.
    aggregate = healthy()
    add(aggregate, 2, 200)
    add(aggregate, 2, 100, outcome=Outcome.CANCELLED)
    result = analyse(PLAN, aggregate, SLOS, completed=3)
    top = result.steps[2]
    assert top.met_slos  # no SLO broke ...
    assert top.achieved_requests_per_s == 20  # ... but 20 of 30 req/s were done
    assert not top.holds_load and not top.met and top.fell_behind == "target"
    # Little's law: a healthy target has 30/s x 0.2 s = 6 in flight (+3 sigma): 14 excused
    assert top.cut == 100 and top.cut_excused == 14
    assert top.held == pytest.approx(214 / 300, abs=1e-3)
    assert "starts on time" in top.behind_reason
    assert "100 still in flight when the run ended (14 excused)" in top.behind_reason
    assert result.capacity == 20 and result.knee_found
    assert result.knee is not None and result.knee.offered == 30
    assert "target fell behind" in result.knee.reason
    text = format_sweep(result)
    assert "capacity: 20 req/s offered (knee at 30 req/s offered" in text
    assert "NOT HELD (target)" in text and "step 2: the target fell behind:" in text


def test_a_step_the_generator_could_not_offer_blames_the_generator_and_finds_no_knee() -> None:
    # The top step's starts went out half a second late and a third were never made.
    aggregate = healthy()
    add(aggregate, 2, 100, queue_ms=0.5)
    add(aggregate, 2, 100, queue_ms=600)
    result = analyse(PLAN, aggregate, SLOS, completed=3)
    top = result.steps[2]
    assert top.met_slos and not top.holds_load and not top.met
    assert top.fell_behind == "generator"
    assert top.late_start_share == pytest.approx(0.5, abs=0.02)
    assert top.queue_ms_p99 == pytest.approx(600, rel=0.02)
    assert "starts late (50% over 100 ms late, p99 5" in top.behind_reason
    assert "100 of 300 due starts never made" in top.behind_reason
    assert "add workers (--processes)" in top.behind_reason
    # The target was never offered 30 req/s: no knee, and 20 is only a lower bound.
    assert result.capacity == 20 and not result.knee_found
    assert result.capacity_lower_bound == 20
    text = format_sweep(result)
    assert "NOT HELD (generator)" in text
    assert (
        "no knee found: capacity >= 20 req/s offered (the load generator fell behind at 30" in text
    )


def test_late_starts_behind_a_full_in_flight_cap_blame_a_target_that_slowed() -> None:
    aggregate = healthy()
    add(aggregate, 2, 200, queue_ms=900, e2e_ms=1500)  # starts waited for the cap
    add(aggregate, 2, 60, outcome=Outcome.CANCELLED)
    aggregate.schedule["cap_waits"] = 150
    top = analyse(PLAN, aggregate, SLOS, completed=3).steps[2]
    assert not top.holds_load and top.fell_behind == "target"
    assert "in-flight cap" in top.behind_reason and "E2E 7.5x" in top.behind_reason
    # the same waits with the target as fast as ever: the cap is too small for the rate
    aggregate = healthy()
    add(aggregate, 2, 200, queue_ms=900)
    add(aggregate, 2, 60, outcome=Outcome.CANCELLED)
    aggregate.schedule["cap_waits"] = 150
    top = analyse(PLAN, aggregate, SLOS, completed=3).steps[2]
    assert top.fell_behind == "generator" and "raise --max-in-flight" in top.behind_reason


def test_failures_are_the_targets_even_when_starts_were_late() -> None:
    aggregate = healthy()
    add(aggregate, 2, 150, queue_ms=300)
    add(aggregate, 2, 150, queue_ms=300, outcome=Outcome.OVERLOADED)
    top = analyse(PLAN, aggregate, parse_slos(["ttft_p95_ms<=1000"]), completed=3).steps[2]
    assert top.fell_behind == "target" and "150 failed" in top.behind_reason


def test_the_end_of_the_run_cuts_only_the_last_step_fairly() -> None:
    aggregate = healthy()
    add(aggregate, 2, 290)
    add(aggregate, 2, 10, outcome=Outcome.CANCELLED)  # in flight at the end, as is normal
    result = analyse(PLAN, aggregate, SLOS, completed=3)
    top = result.steps[2]
    assert top.holds_load and top.met and top.cut_excused == 10 and top.held == 1
    assert result.capacity == 30
    # The same cut in a step that is not the run's last: its requests had the next step's
    # time to finish, so none are excused (it still holds here: 290 of 300 is over 90%).
    assert step_row(PLAN, 2, aggregate.slices("step")[2], SLOS)["cut_excused"] == 0
    # A run cut in the middle of a step: the completed steps before it get no allowance.
    add(aggregate, 3, 5)
    row = analyse(SweepPlan("rate", 10, 10, 10, 40), aggregate, SLOS, completed=3).steps[2]
    assert row.cut_excused == 0


def test_a_poisson_draw_short_of_the_mean_is_chance_not_a_failure() -> None:
    aggregate = healthy()
    add(aggregate, 2, 255)  # 300 due on average; 255 is within 3 sigma (52) of it
    top = analyse(PLAN, aggregate, SLOS, completed=3).steps[2]
    assert top.holds_load and top.held == 1 and top.achieved_requests_per_s == 25.5
    aggregate = healthy()
    add(aggregate, 2, 230)  # 70 short: more than chance; on time, nothing failed or cut
    top = analyse(PLAN, aggregate, SLOS, completed=3).steps[2]
    assert not top.holds_load and top.fell_behind == "generator"
    assert top.behind_reason.startswith("70 of 300 due starts never made (those made were on")


def test_users_sweeps_do_not_apply_the_ninety_percent_rule() -> None:
    plan = SweepPlan("users", 10, 10, 10, 30)
    aggregate = Aggregate()
    for index in range(3):
        add(aggregate, index, 50, queue_ms=0.0)  # 5 req/s for 10, 20, 30 users
    result = analyse(plan, aggregate, SLOS, completed=3)
    assert all(r.holds_load is None and r.met for r in result.steps)
    assert result.hold_fraction is None and not result.knee_found
    text = format_sweep(result)
    assert "closed loop: offered is a user count" in text and "rule applies to rate sweeps" in text
    assert "no knee found: capacity >= 30 users" in text and "NOT HELD" not in text


def test_per_group_capacity_uses_each_groups_share_of_the_load() -> None:
    # 30 req/s split 2:1; opus answers only half of its 100 and the rest are cut
    aggregate = Aggregate()
    for index in range(2):
        due = int(PLAN.load(index) * PLAN.step_duration_s)
        add(aggregate, index, due * 2 // 3)
        add(aggregate, index, due // 3, model=OPUS)
    add(aggregate, 2, 200)
    add(aggregate, 2, 50, model=OPUS)
    add(aggregate, 2, 50, model=OPUS, outcome=Outcome.CANCELLED)
    result = analyse(PLAN, aggregate, SLOS, completed=3)
    assert result.capacity_by_group == {f"{OPUS} standard": 20, f"{HAIKU} standard": 30}
    assert result.knee_found_by_group == {f"{OPUS} standard": True, f"{HAIKU} standard": False}
    assert result.capacity == 20  # overall: 250 + 15 excused of 300 is 88%
    text = format_sweep(result)
    assert text.endswith(f"{HAIKU} standard: >= 30 (no knee)\n  {OPUS} standard: 20")


def test_the_html_report_claims_no_more_than_the_text() -> None:
    empty = build_summary(Aggregate(), "r1", META)
    no_knee = analyse(PLAN, healthy(3), SLOS, completed=3)
    page = render_report(Aggregate(), empty.model_copy(update={"sweep": no_knee}))
    assert "capacity &gt;= 30 (no knee)" in page
    assert "no knee found: capacity &gt;= 30 req/s offered" in page
    knee = healthy()
    add(knee, 2, 300, ttft_ms=2500, e2e_ms=2600)
    with_knee = empty.model_copy(update={"sweep": analyse(PLAN, knee, SLOS, completed=3)})
    page = render_report(Aggregate(), with_knee)
    assert ">capacity 20<" in page and "no knee" not in page
    assert "capacity: 20 req/s offered (knee at 30" in page


def test_share_above_and_the_cut_allowance() -> None:
    sketch = Sketch()
    for value in [1.0] * 75 + [500.0] * 25:
        sketch.add(value)
    assert share_above(sketch, 100) == pytest.approx(0.25, abs=0.02)
    assert share_above(sketch, 1000) == 0 and share_above(sketch, 0.5) == 1
    assert share_above(Sketch(), 1) is None
    assert cut_allowance(30, 200) == 14 and cut_allowance(30, None) == 0
