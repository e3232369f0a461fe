"""The sweep's load shape: the steps of a users or rate sweep, ended early once SLOs break."""

from __future__ import annotations

import logging

from locust import LoadTestShape

from loadkit.locust_plugin.capacity import options_slos, sweep_plan
from loadkit.locust_plugin.run import run_of
from loadkit.sweep import clearly_broken

log = logging.getLogger("loadkit")


class SweepShape(LoadTestShape):
    """Steps users (or holds them while the rate steps) and ends the sweep early once two
    steps in a row, or one by a wide margin, broke an SLO."""

    # -u is read (the users that share a rate sweep's arrivals): Locust must not call it ignored
    use_common_options = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Locust's shape is unannotated
        self._broken_steps = 0
        self._judged = -1

    def tick(self) -> tuple[int, float] | None:
        if self.runner is None:
            return None
        options = self.runner.environment.parsed_options
        plan = sweep_plan(options) if options is not None else None
        if options is None or plan is None:
            return None
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        step = plan.step_at(elapsed)
        if step is None:
            return None
        # Judge the previous step once the workers' reports for it are in (3 s cadence).
        if step - 1 > self._judged and elapsed - step * plan.step_duration_s > 3.5:
            self._judged = step - 1
            run = run_of(self.runner.environment)
            workload_slos = list(run.plan.workload_slos) if run.plan else []
            slos = options_slos(options, workload_slos)
            groups = run.aggregate.slices("step").get(step - 1)
            if slos and groups:
                from loadkit.sweep import step_row

                row = step_row(plan, step - 1, groups, slos)
                self._broken_steps = 0 if row["met_slos"] else self._broken_steps + 1
                if self._broken_steps >= 2 or clearly_broken(row):
                    log.info("loadkit sweep: SLOs clearly broken at step %d; stopping", step - 1)
                    return None
        users = int(plan.load(step)) if plan.kind == "users" else int(options.num_users or 1)
        return max(1, users), max(1.0, float(users))
