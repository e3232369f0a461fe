"""The emulator's own event-loop lag in ``/_emulator/stats`` (``event_loop_lag_ms``).

Not an API behaviour (the Messages API has no such figure): the emulator's ground truth about
itself, so that a harness can tell the emulator's lateness from its own. The lag is proved
against a loop stalled on purpose by ``POST /_emulator/block?ms=N``, a control that exists
only with a control token and needs it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from loadkit.emulator import histogram, looplag
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.emulator.stats import Stats

TOKEN = "lag-token-7"
AUTH = {"x-loadkit-control-token": TOKEN}
CONFIG: dict[str, Any] = {"output_tokens": {"kind": "fixed", "value": 5}}
BLOCK_MS = 300


def lag(emulator: EmulatorProcess) -> dict[str, Any]:
    stats = httpx2.get(f"{emulator.base_url}/_emulator/stats", timeout=10).json()
    figure: dict[str, Any] = stats["event_loop_lag_ms"]
    return figure


def wait_for_samples(emulator: EmulatorProcess, n: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        figure = lag(emulator)
        if figure["since_start"]["samples"] >= n or time.monotonic() > deadline:
            return figure
        time.sleep(0.05)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorProcess]:
    monkeypatch.setenv("LOADKIT_EMULATOR_CONTROL_TOKEN", TOKEN)
    with EmulatorProcess(config=CONFIG) as emulator:
        yield emulator


def test_lag_is_in_stats_sane_and_rises_when_the_loop_is_blocked(
    guarded: EmulatorProcess,
) -> None:
    figure = wait_for_samples(guarded, 40)
    interval_s = figure["probe_interval_ms"] / 1000.0
    assert interval_s == 0.01
    for span in ("since_start", "recent"):
        part = figure[span]
        assert part["samples"] >= 40
        assert 0.0 <= part["p50"] <= part["p99"] * 1.02 and part["p99"] <= part["max"] * 1.02
        assert 0.0 <= part["own_p50"] <= part["own_p99"] * 1.02
        assert part["own_max"] <= part["max"]
        assert part["p50"] < 20.0  # an idle loop's median timer is not 20 ms late
    start = figure["since_start"]
    # one loop sampling every 10 ms cannot have more samples than its uptime allows
    assert start["samples"] <= start["seconds"] / interval_s + 1

    refused = httpx2.post(f"{guarded.base_url}/_emulator/block?ms={BLOCK_MS}", timeout=10)
    assert refused.status_code == 401
    assert TOKEN not in refused.text
    assert lag(guarded)["since_start"]["max"] < BLOCK_MS - 10

    bad = httpx2.post(f"{guarded.base_url}/_emulator/block?ms=5000", headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "ms" in bad.json()["error"]["message"]

    t0 = time.perf_counter()
    blocked = httpx2.post(
        f"{guarded.base_url}/_emulator/block?ms={BLOCK_MS}", headers=AUTH, timeout=10
    )
    assert blocked.status_code == 200 and blocked.json() == {"blocked_ms": BLOCK_MS}
    assert time.perf_counter() - t0 >= BLOCK_MS / 1000.0
    after = lag(guarded)
    for span in ("since_start", "recent"):
        # the probe's timer was due at most one interval (10 ms) after the stall began
        assert BLOCK_MS - 10 <= after[span]["max"] < BLOCK_MS + 1000
        # the loop stalled itself (it slept; it did not wait for a CPU): the lag is its own
        assert after[span]["own_max"] >= BLOCK_MS - 50
    assert after["since_start"]["samples"] > figure["since_start"]["samples"]


def test_block_does_not_exist_without_a_control_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOADKIT_EMULATOR_CONTROL_TOKEN", raising=False)
    with EmulatorProcess(config=CONFIG) as emulator:
        t0 = time.perf_counter()
        for headers in ({}, AUTH):
            answer = httpx2.post(
                f"{emulator.base_url}/_emulator/block?ms={BLOCK_MS}", headers=headers, timeout=10
            )
            assert answer.status_code == 404
        assert time.perf_counter() - t0 < BLOCK_MS / 1000.0
        assert lag(emulator)["since_start"]["max"] < BLOCK_MS - 10


def test_lag_merges_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADKIT_EMULATOR_CONTROL_TOKEN", TOKEN)
    with EmulatorProcess(config=CONFIG, processes=2) as emulator:
        figure = wait_for_samples(emulator, 100)
        start = figure["since_start"]
        # more samples than one loop can take in the time: both processes' are in
        assert start["samples"] > start["seconds"] / 0.01 * 1.2
        assert figure["recent"]["samples"] == start["samples"]  # younger than the window
        answer = httpx2.post(
            f"{emulator.base_url}/_emulator/block?ms={BLOCK_MS}", headers=AUTH, timeout=10
        )
        assert answer.status_code == 200
        # whichever worker stalled, the merged figure shows it
        assert lag(emulator)["since_start"]["max"] >= BLOCK_MS - 10


def test_histogram_percentiles_and_merge_agree_with_the_samples() -> None:
    loop = asyncio.new_event_loop()
    try:
        rng = random.Random(7)
        a, b = looplag.LoopLag(loop), looplag.LoopLag(loop)
        values = [rng.lognormvariate(-1.0, 1.5) for _ in range(4000)]
        for i, value in enumerate(values):
            (a if i % 2 else b).record(value, value / 2, time.perf_counter())
        merged = looplag.merge([a.raw(), b.raw()])
        with pytest.raises(ValueError, match="interval_s"):
            looplag.LoopLag(loop, interval_s=0.0)
    finally:
        loop.close()
    exact = sorted(values)
    start = merged["since_start"]
    assert start["samples"] == merged["recent"]["samples"] == len(values)
    for q, key in ((0.50, "p50"), (0.99, "p99")):
        want = exact[int(q * len(exact)) - 1]
        assert want <= start[key] <= want * histogram.GROWTH * 1.0001  # a bucket's upper edge
        assert merged["recent"][key] == want  # the window keeps the samples themselves
    assert start["max"] == merged["recent"]["max"] == exact[-1]
    assert start["own_max"] == exact[-1] / 2


def test_lateness_percentiles_from_the_histogram_match_the_samples() -> None:
    stats = Stats(served_log_size=0)
    rng = random.Random(3)
    seconds = [rng.expovariate(1000.0) for _ in range(20_000)]
    for value in seconds:
        stats.record_lateness(value)
    figure = stats.snapshot()["first_token_lateness_ms"]
    exact = sorted(v * 1000.0 for v in seconds)
    assert figure["count"] == len(exact)
    assert figure["max"] == exact[-1]
    for q, key in ((0.50, "p50"), (0.99, "p99")):
        want = exact[int(q * len(exact)) - 1]
        assert want <= figure[key] <= want * histogram.GROWTH * 1.0001
    stats.reset()
    assert stats.snapshot()["first_token_lateness_ms"] == {
        "count": 0,
        "p50": None,
        "p99": None,
        "max": None,
    }


@pytest.mark.timing
def test_a_stats_snapshot_does_not_grow_with_the_requests_served() -> None:
    """It sorted every sample kept: ~90 ms at 200,000 (the emulator's loop held as long)."""
    stats = Stats(served_log_size=0)
    for i in range(200_000):
        stats.record_lateness((i % 997) / 1e6)
    t0 = time.perf_counter()
    stats.snapshot()
    assert time.perf_counter() - t0 < 0.005
