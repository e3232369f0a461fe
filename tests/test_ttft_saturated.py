"""TTFT on a saturated load generator: never shorter than what the server took.

The client's clock for a request starts at ``t_send``; its answer is stamped by the kernel
as it arrives (lean stack) or when Python reads it (httpx stack). If ``t_send`` were read
after the write returned, any pause between the write and that clock read (a GIL hand-over,
a collection) would move the start later while the answer's times stay put: TTFT would be
under-measured, even negative. Here the process is saturated on purpose, so that such
pauses happen on nearly every request, and every request is checked against the
emulator's own account of it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from loadkit.client import HTTP_STACKS, RequestSpec, StreamingClient
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.record import ResultRecord

from .conftest import Control

MODEL = "claude-haiku-4-5"
HELLO = [{"role": "user", "content": "hello"}]
SENDERS = 6  # client threads, each with its own connection
REQUESTS_PER_SENDER = 12
BURNERS = 2  # threads that only burn CPU
# The served TTFT is short (3-5 ms), so that a start stamped a GIL hand-over (5 ms) late
# makes TTFT negative, not just short.
SERVED_TTFT_MS = 3
SLACK_MS = 1.0
# the emulator's stamps are float seconds of CLOCK_MONOTONIC turned into ns: ~0.1 us off
ROUNDING_NS = 10_000


def _burn(stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1


def _probe(stop: threading.Event, waits_ms: list[float]) -> None:
    """How long a thread back from a syscall waits for the GIL (what the senders go through)."""
    while not stop.is_set():
        start = time.perf_counter_ns()
        time.sleep(0.001)  # gives the GIL up for 1 ms, then has to win it back
        waits_ms.append((time.perf_counter_ns() - start) / 1e6 - 1.0)


def _send(
    client: StreamingClient, records: list[ResultRecord], errors: list[BaseException]
) -> None:
    try:
        for _ in range(REQUESTS_PER_SENDER):
            spec = RequestSpec(MODEL, "standard", 50, HELLO, t_intended=time.perf_counter_ns())
            records.append(client.send(spec))
    except BaseException as err:
        errors.append(err)


def _run_saturated(client: StreamingClient) -> tuple[list[ResultRecord], list[float]]:
    """Many senders and CPU burners in one process: the GIL is always contended.

    Threads, not greenlets, on purpose: a thread returning from a syscall (the write, each
    read) must win the GIL back from a burner, which CPython hands over only every switch
    interval (5 ms). That is a pause after the write, on nearly every request, which a
    greenlet-only setup (no switch inside ``sendall``) would not produce.
    """
    stop = threading.Event()
    waits_ms: list[float] = []
    helpers = [threading.Thread(target=_burn, args=(stop,)) for _ in range(BURNERS)]
    helpers.append(threading.Thread(target=_probe, args=(stop, waits_ms)))
    records: list[ResultRecord] = []
    errors: list[BaseException] = []
    senders = [
        threading.Thread(target=_send, args=(client, records, errors)) for _ in range(SENDERS)
    ]
    for thread in helpers + senders:
        thread.start()
    deadline = time.monotonic() + 60  # the whole batch; a hung sender fails the test, fast
    try:
        for thread in senders:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        stop.set()
        for thread in helpers:
            thread.join(timeout=10)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in senders)
    return records, waits_ms


@pytest.mark.timing
@pytest.mark.parametrize("http_stack", HTTP_STACKS)
def test_ttft_is_never_shorter_than_served_on_a_saturated_process(
    emulator: EmulatorProcess, control: Control, http_stack: str
) -> None:
    control.configure({"models": {MODEL: {"ttft_base_ms": SERVED_TTFT_MS}}}).raise_for_status()
    client = StreamingClient(
        emulator.base_url, "test-key", pool_size=SENDERS, http_stack=http_stack, timeout_s=20
    )
    try:
        client.send(RequestSpec(MODEL, "standard", 5, HELLO))  # warm, unsaturated
        records, gil_waits_ms = _run_saturated(client)
    finally:
        client.close()
    served: dict[str, dict[str, Any]] = {
        s["request_id"]: s for s in control.http.get("/_emulator/served").json()
    }
    assert len(records) == SENDERS * REQUESTS_PER_SENDER
    # the process really was saturated: a thread back from a syscall waited for the GIL
    gil_waits_ms.sort()
    assert gil_waits_ms[len(gil_waits_ms) // 2] > 1.0, gil_waits_ms[::10]

    for record in records:
        truth = served[record.request_id or ""]
        label = (record.request_id, http_stack)
        assert record.ok and record.output_tokens == 20, (label, record.error_message)
        ttft, e2e, attempt_ttft = record.ttft_ms, record.e2e_ms, record.attempts[-1].ttft_ms
        schedule_ttft = record.schedule_ttft_ms
        assert ttft is not None and e2e is not None and attempt_ttft is not None
        assert schedule_ttft is not None
        # The claim. Client: t_send is read before the write, so it is no later than the
        # real send; the first token's time (kernel arrival, or the later read) is no
        # earlier than its arrival. Emulator: its start is stamped once the whole request
        # was read (after the client's write began), its first token just before writing
        # it (before it can arrive here). So client TTFT >= served TTFT holds on one
        # timeline (CLOCK_MONOTONIC), whatever pauses either process takes: no margin is
        # needed but for float rounding of the served time (~0.1 us); 1 ms is plenty.
        # What could still break it, on the lean stack only: the kernel dates arrivals in
        # wall-clock time, moved onto the monotonic clock by reading both clocks (wall
        # first, so a pause between the two reads only makes the arrival later). A step of
        # the wall clock (settimeofday, an NTP step, not a slew: slewing moves both clocks
        # alike) between a segment's arrival and its read would shift that arrival; the
        # transport keeps it no earlier than the write began, so TTFT stays >= 0, but it
        # could come out short of the served one. Nothing here steps the clock.
        assert ttft >= truth["actual_ttft_ms"] - SLACK_MS, (label, ttft, truth)
        # ... and point by point, on the shared CLOCK_MONOTONIC (which side went wrong)
        assert record.t_send <= truth["arrived_ns"] + ROUNDING_NS, (label, record, truth)
        assert record.t_first_token >= truth["first_token_ns"] - ROUNDING_NS, (label, truth)
        # no latency is negative, and the points are in order
        assert record.t_send < record.t_headers <= record.t_first_token, label
        assert record.t_first_token <= record.t_last_token <= record.t_end, label
        assert 0 < attempt_ttft == ttft <= e2e, label
        assert schedule_ttft >= ttft, label
        assert all(gap >= 0 for gap in record.itl_ns), (label, record.itl_ns)
        # undefined when one late read took the whole stream (one arrival stamp for it all)
        assert record.otps is None or record.otps > 0, label
