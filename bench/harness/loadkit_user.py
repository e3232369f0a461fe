"""loadkit's own user (``LLMUser``), unchanged, plus a listener on ``result_event``.

    ANTHROPIC_API_KEY=x locust -f bench/harness/loadkit_user.py --headless -u 20 -r 20 -t 30s \
        --workload bench/harness/workload.yaml --target-url http://127.0.0.1:8000
"""

from __future__ import annotations

import random
from typing import Any

import gevent
from benchcollect import COLLECTOR, stagger_s

from loadkit.locust_plugin import LLMUser, result_event
from loadkit.record import ResultRecord


@result_event.add_listener
def _collect(record: ResultRecord, **_: Any) -> None:
    COLLECTOR.add(
        record.request_id,
        record.t_send,
        record.t_first_token,
        record.t_end,
        record.deltas,
        record.ok,
        None if record.ok else f"{record.outcome.value}: {record.error_type}",
    )


class LoadkitUser(LLMUser):
    def on_start(self) -> None:
        gevent.sleep(random.uniform(0.0, stagger_s()))
