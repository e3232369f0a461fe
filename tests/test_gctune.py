"""The tuned collector never walks many objects at once while streams pile up."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from loadkit.gctune import tune_gc


class _Stream:
    """Stands for one held stream's objects: a few linked containers that live on."""

    __slots__ = ("parts", "peer")

    def __init__(self, peer: Any) -> None:
        self.parts = [{"n": i} for i in range(6)]
        self.peer = peer


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_collections_walk_few_objects_while_15000_streams_pile_up(restore_gc: None) -> None:
    """With ``tune_gc`` (the emulator and every Locust process call it), 15,000 streams of
    long-lived objects arriving (~120k container objects, about the emulator's 10,000-stream
    hold) cause only small collections: none walks more than a few thousand objects and no
    full collection runs. With the earlier thresholds (100,000, 50, 1000)
    this test saw a collection walk 25,007 objects, and the emulator's young collections at a
    10,000-stream hold walked up to 100,000 (65 ms of CPU each)."""
    tune_gc()
    walked: list[tuple[int, int]] = []  # (generation, objects in the generations collected)

    def measure(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generation = info["generation"]
            walked.append((generation, sum(len(gc.get_objects(g)) for g in range(generation + 1))))

    held: list[_Stream] = []
    gc.callbacks.append(measure)
    try:
        previous: Any = None
        for _ in range(15_000):
            previous = _Stream(previous if len(held) % 2 else None)
            held.append(previous)
    finally:
        gc.callbacks.remove(measure)
    assert walked, "no collection ran: the test did not exercise the collector"
    assert max(generation for generation, _ in walked) < 2, walked
    largest = max(count for _, count in walked)
    assert largest <= 5_000, f"a collection walked {largest} objects"
