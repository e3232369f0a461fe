"""Open-loop arrival schedules: a rate change takes effect at once, not one old gap later."""

from __future__ import annotations

import random

import pytest

from loadkit.arrivals import ArrivalSchedule

SECOND = 1_000_000_000


def starts_between(schedule: ArrivalSchedule, low_s: float, high_s: float) -> int:
    count = 0
    while True:
        at = (schedule.next_start() - schedule.start_ns) / SECOND
        if at >= high_s:
            return count
        count += at >= low_s


@pytest.mark.parametrize("kind", ["poisson", "constant"])
def test_a_step_up_in_rate_takes_effect_at_the_step(kind: str) -> None:
    """200 users step from 0.1 to 1 request/s at 10 s: the first second of the new step gets
    its 200 starts (Poisson: within 4 standard deviations), not the few whose old-rate gap
    happened to end then."""

    def rate(seconds: float) -> float:
        return 0.1 if seconds < 10 else 1.0

    def changes_after(seconds: float) -> float | None:
        return 10.0 if seconds < 10 else None

    rng = random.Random(5)
    total = sum(
        starts_between(ArrivalSchedule(rate, kind, rng, 0, changes_after), 10.0, 11.0)  # type: ignore[arg-type]
        for _ in range(200)
    )
    assert abs(total - 200) <= 4 * 200**0.5
    # Without the change points, most users' next start is still an old-rate gap away.
    rng = random.Random(5)
    stale = sum(
        starts_between(ArrivalSchedule(rate, kind, rng, 0), 10.0, 11.0)  # type: ignore[arg-type]
        for _ in range(200)
    )
    assert stale < 100


def test_rate_is_read_at_the_start_of_each_gap_without_change_points() -> None:
    schedule = ArrivalSchedule(lambda _: 4.0, "constant", random.Random(1), 0)
    first = schedule.next_start()
    assert [schedule.next_start() - first for _ in range(3)] == [SECOND // 4 * k for k in (1, 2, 3)]
