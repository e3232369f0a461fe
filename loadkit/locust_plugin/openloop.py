"""Open-loop arrivals in Locust: each user's share of the total rate, stepped by a rate sweep,
on schedule whatever the answers do."""

from __future__ import annotations

import random
import time

from loadkit.arrivals import ArrivalSchedule
from loadkit.locust_plugin.capacity_settings import Settings

LATE_START_MS = 1.0  # an open-loop start this much after its schedule counts as late


def rate_per_user_at(settings: Settings, wall: float) -> float:
    """The open-loop rate of one user's share at the wall-clock time ``wall``."""
    plan = settings.plan
    if plan is None or plan.kind != "rate":
        return settings.rate_per_user
    step = plan.step_at(wall - settings.sweep_start_wall)
    return plan.load(step) / settings.users_total if step is not None else 0.0


def next_rate_change(settings: Settings, wall: float) -> float | None:
    """The wall-clock time of the first rate change after ``wall`` (None: none comes)."""
    if settings.plan is None or settings.plan.kind != "rate":
        return None
    plan = settings.plan
    elapsed = wall - settings.sweep_start_wall
    if elapsed < 0:
        return settings.sweep_start_wall
    step = int(elapsed // plan.step_duration_s) + 1
    return settings.sweep_start_wall + step * plan.step_duration_s if step <= plan.steps else None


def open_loop_active(settings: Settings | None) -> bool:
    return settings is not None and settings.rate_per_user > 0


def open_loop_schedule(settings: Settings | None, rng: random.Random) -> ArrivalSchedule | None:
    if settings is None or settings.rate_per_user <= 0:
        return None
    started_wall = time.time()
    started_ns = time.perf_counter_ns()

    def changes_after(seconds: float) -> float | None:
        change = next_rate_change(settings, started_wall + seconds)
        return None if change is None else change - started_wall

    return ArrivalSchedule(
        lambda seconds: rate_per_user_at(settings, started_wall + seconds),
        settings.arrival,  # type: ignore[arg-type]
        rng,
        start_ns=started_ns,
        changes_after=changes_after,
    )
