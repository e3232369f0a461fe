"""The Locust user: one streaming Messages request per task, drawn from the workload."""

from __future__ import annotations

import gevent
from locust import User, constant, task

from loadkit.client import RequestCancelled
from loadkit.locust_plugin.reporting import report
from loadkit.locust_plugin.state import STATE


class LLMUser(User):
    """Sends streaming requests back to back (closed loop); subclass it in a locustfile."""

    abstract = True
    wait_time = constant(0)

    @task
    def stream_one(self) -> None:
        policy = STATE.policy
        if policy is None:  # the run could not be prepared; the error was logged
            gevent.sleep(1.0)
            return
        spec = STATE.next_spec()
        try:
            record = policy.send(spec)
        except RequestCancelled as cancelled:
            report(self.environment, cancelled.record)
            raise cancelled.__cause__ or cancelled from None
        report(self.environment, record)
