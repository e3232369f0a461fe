"""The Locust user people write first: the SDK's ``messages.stream()`` and ``text_stream``.

One ``anthropic.Anthropic`` client shared by every user (as DESIGN.md section 6 advises), its
default connection pool, TTFT taken at the first text, one Locust request event per request.

    locust -f bench/harness/naive_user.py --headless -u 20 -r 20 -t 30s -H http://127.0.0.1:8000
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import anthropic
import gevent
from benchcollect import MAX_TOKENS, MODEL, PROMPT, finish_request, stagger_s
from locust import User, constant, events, task

_now = time.perf_counter_ns
CLIENT: anthropic.Anthropic | None = None


@events.test_start.add_listener
def _make_client(environment: Any, **_: Any) -> None:
    global CLIENT
    CLIENT = anthropic.Anthropic(
        base_url=environment.host,
        api_key=os.environ.get("ANTHROPIC_API_KEY") or "bench-key",
        max_retries=0,
    )


class NaiveUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        gevent.sleep(random.uniform(0.0, stagger_s()))

    @task
    def chat(self) -> None:
        assert CLIENT is not None
        t_send = _now()
        t_first = 0
        deltas = 0
        request_id: str | None = None
        error: Exception | None = None
        try:
            with CLIENT.messages.stream(
                model=MODEL,
                max_tokens=MAX_TOKENS,
                messages=[{"role": "user", "content": PROMPT}],
            ) as stream:
                request_id = stream.response.headers.get("request-id")
                for _text in stream.text_stream:
                    if not t_first:
                        t_first = _now()
                    deltas += 1
        except Exception as err:
            error = err
        t_end = _now()
        finish_request(self.environment, request_id, t_send, t_first, t_end, deltas, error)
