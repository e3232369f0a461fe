"""The capacity settings every process derives from the options at each start (open loop,
sweep, SLOs, windows, cost guard): a module of its own, so that the run and the features
that read the settings need not import ``capacity``, which imports them."""

from __future__ import annotations

from dataclasses import dataclass

from loadkit.budget import Budget
from loadkit.slo import SLO
from loadkit.sweep import SweepPlan


@dataclass
class Settings:
    """What every process needs, derived once per run from the options."""

    slos: list[SLO]
    plan: SweepPlan | None
    sweep_start_wall: float
    run_start_wall: float
    rate_per_user: float  # open loop (0: closed loop); for a rate sweep, the first step's
    users_total: int
    in_flight_per_user: int
    arrival: str
    windows: bool
    budget: Budget | None
