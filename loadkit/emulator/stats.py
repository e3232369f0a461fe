"""Counters by model, speed and outcome, and the per-request ground truth the emulator served.

``Counters`` account for Messages requests (``/v1/messages``, any method), including those
refused before they were read in full (413, 431, 408: ``invalid``) and those a client
pipelined and then left (``client_closed``): received == in_flight + the sum of OUTCOMES.
``HttpCounters`` (in ``http.py``) account for every HTTP request on any path.
First-token lateness since start (or reset) is kept in a histogram (``histogram.py``): a
snapshot costs the same after a million requests as after ten.

A ``--processes`` emulator merges its processes' snapshots with ``merge_snapshots`` and their
served records, oldest first, by the CLOCK_MONOTONIC time each was logged (``served_stamped``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import islice
from typing import Any

from loadkit.emulator.histogram import Histogram
from loadkit.emulator.http import HttpCounters

# Every request received ends in exactly one of these (or is still in flight).
OUTCOMES = (
    "completed",
    "rate_limited",
    "overloaded",
    "api_error",
    "midstream_error",
    "cut",
    "client_closed",
    "invalid",
    "unauthorized",
)
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "thinking_tokens",
    "tool_use_tokens",
)


@dataclass(slots=True)
class Counters:
    """One model and speed's counts: in flight, queued, received, then OUTCOMES and tokens."""

    in_flight: int = 0
    queued: int = 0
    received: int = 0
    completed: int = 0
    rate_limited: int = 0
    overloaded: int = 0
    api_error: int = 0
    midstream_error: int = 0
    cut: int = 0
    client_closed: int = 0
    invalid: int = 0
    unauthorized: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    thinking_tokens: int = 0  # of output_tokens: thinking blocks
    tool_use_tokens: int = 0  # of output_tokens: tool_use inputs (the rest is text)
    acceleration_limited: int = 0  # of rate_limited: refused by the acceleration limit

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_FIELDS}


COUNTER_FIELDS = tuple(f.name for f in fields(Counters))


@dataclass(slots=True)
class Served:
    """What one request was served: the ground truth a harness measures itself against."""

    request_id: str
    model: str
    speed: str
    outcome: str
    queue_ms: float
    planned_ttft_ms: float  # from the request's arrival to its first delta, as scheduled
    actual_ttft_ms: float | None  # as written to the socket
    decode_tokens_per_s: float
    output_tokens: int
    first_token_lateness_ms: float | None
    # CLOCK_MONOTONIC in ns (time.perf_counter_ns on Linux), comparable with a local client's.
    arrived_ns: int = 0
    first_token_ns: int = 0  # the first token of any kind (thinking, text or tool input)
    first_text_ns: int = 0  # the first text token; 0: none (yet)
    # output_tokens = thinking_tokens + text_tokens + tool_use_tokens (tool input JSON)
    thinking_tokens: int = 0
    text_tokens: int = 0
    tool_use_tokens: int = 0


SERVED_FIELDS = tuple(f.name for f in fields(Served))


def served_dict(record: Served) -> dict[str, Any]:
    return {name: getattr(record, name) for name in SERVED_FIELDS}


class Stats:
    def __init__(self, served_log_size: int) -> None:
        self.by_key: dict[tuple[str, str], Counters] = {}
        self.http = HttpCounters()
        self.served: deque[Served] = deque(maxlen=served_log_size)
        self._served_at: deque[int] = deque(maxlen=served_log_size)  # monotonic ns, logged
        self._served_by_id: dict[str, Served] = {}
        self.lateness = Histogram()  # first-token lateness (ms) since start or reset

    # ground truth -----------------------------------------------------------------------
    def add_served(self, record: Served) -> None:
        served = self.served
        if served.maxlen == 0:
            return
        if len(served) == served.maxlen:
            oldest = served[0]
            if self._served_by_id.get(oldest.request_id) is oldest:
                del self._served_by_id[oldest.request_id]
        served.append(record)
        self._served_at.append(time.monotonic_ns())
        self._served_by_id[record.request_id] = record

    def resize_served(self, size: int) -> None:
        if size == self.served.maxlen:
            return
        self.served = deque(self.served, maxlen=size)
        self._served_at = deque(self._served_at, maxlen=size)
        self._served_by_id = {record.request_id: record for record in self.served}

    def served_by_id(self, request_id: str) -> list[Served]:
        found = self._served_by_id.get(request_id)
        return [found] if found is not None else []

    def served_slice(self, offset: int, limit: int | None) -> list[Served]:
        """A copy of the records (oldest first) from ``offset``, at most ``limit`` of them."""
        served = self.served
        end = len(served) if limit is None else min(len(served), offset + limit)
        if offset == 0 and end == len(served):
            return list(served)
        return list(islice(served, offset, end))

    def served_stamped(self, records: Iterable[Served] | None = None) -> list[tuple[int, Served]]:
        """``(monotonic ns when logged, record)`` for every record (or for ``records``, which
        must be in the log), oldest first."""
        if records is None:
            return list(zip(self._served_at, self.served, strict=True))
        stamps = {id(r): t for t, r in zip(self._served_at, self.served, strict=True)}
        return [(stamps[id(r)], r) for r in records]

    def counters(self, model: str, speed: str) -> Counters:
        key = (model, speed)
        found = self.by_key.get(key)
        if found is None:
            found = self.by_key[key] = Counters()
        return found

    def record_lateness(self, seconds: float) -> None:
        self.lateness.add(seconds * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        rows = {key: counters.as_dict() for key, counters in self.by_key.items()}
        return _snapshot(rows, self.http.as_dict(), self.lateness)

    def reset(self) -> None:
        kept = {key: c for key, c in self.by_key.items() if c.in_flight}
        for counters in kept.values():
            for name in COUNTER_FIELDS:
                if name not in ("in_flight", "queued"):
                    setattr(counters, name, 0)
            counters.received = counters.in_flight
        self.by_key = kept
        self.http.reset()
        self.served.clear()
        self._served_at.clear()
        self._served_by_id.clear()
        self.lateness.clear()


def _snapshot(
    rows: dict[tuple[str, str], dict[str, int]], http: dict[str, Any], lateness: Histogram
) -> dict[str, Any]:
    totals = dict.fromkeys(COUNTER_FIELDS, 0)
    by_model_speed = []
    for (model, speed), row in sorted(rows.items()):
        by_model_speed.append({"model": model, "speed": speed, **row})
        for name in COUNTER_FIELDS:
            totals[name] += row[name]
    return {
        "by_model_speed": by_model_speed,
        "totals": totals,
        "http": http,
        "first_token_lateness_ms": {"count": lateness.total, **lateness.figures()},
    }


def merge_snapshots(parts: Sequence[dict[str, Any]], lateness: Histogram) -> dict[str, Any]:
    """One snapshot of several processes' ``snapshot()`` s: counters and HTTP counts summed,
    lateness percentiles from ``lateness`` (every process's histogram added)."""
    rows: dict[tuple[str, str], dict[str, int]] = {}
    http: dict[str, Any] = {"received": 0, "in_progress": 0, "responses": {}, "closed": 0}
    for part in parts:
        for row in part["by_model_speed"]:
            merged = rows.setdefault((row["model"], row["speed"]), dict.fromkeys(COUNTER_FIELDS, 0))
            for name in COUNTER_FIELDS:
                merged[name] += row[name]
        for name in ("received", "in_progress", "closed"):
            http[name] += part["http"][name]
        for status, count in part["http"]["responses"].items():
            http["responses"][status] = http["responses"].get(status, 0) + count
    http["responses"] = dict(sorted(http["responses"].items(), key=lambda item: int(item[0])))
    return _snapshot(rows, http, lateness)
