"""Token buckets in memory shared by the processes of ``loadkit emulator --processes N``.

Made by the supervising process before it forks its workers, so each worker maps the same
pages. A bucket is a slot of five doubles (capacity, rate, level, stamp, active) found by
the digest of its key (its limit class and its name); a slot, once given to a key, stays
its own, so every process's ``Bucket`` for a key reads and writes the same numbers. One
process-shared lock guards every slot: ``RateLimits`` takes it around each check-and-charge,
refund and set of headers (one acquire per admission, a microsecond or so uncontended).

Bucket times are ``loop.time()``: CLOCK_MONOTONIC under both asyncio and uvloop, one clock
for every process on the machine. A process whose loop time lags another's by a fraction of
a millisecond simply does not refill (``now`` earlier than the stamp adds nothing).
"""

from __future__ import annotations

import hashlib
import multiprocessing
from multiprocessing.sharedctypes import RawArray
from typing import Any

from loadkit.emulator.limits import Bucket

SLOTS = 1024  # buckets: 3 per limit class and 2 for its long-context pool (at most 100
# classes), 2 for fast mode and 2 for the acceleration limit, with room
FIELDS = 5
_CAPACITY, _RATE, _LEVEL, _STAMP, _ACTIVE = range(FIELDS)
KEY_BYTES = 16


class SharedBucket(Bucket):
    """A ``Bucket`` whose numbers live in a slot of ``SharedBuckets``."""

    __slots__ = ("_base", "_mem")

    def __init__(self, mem: Any, slot: int) -> None:
        self._mem = mem
        self._base = slot * FIELDS

    @property
    def capacity(self) -> float:
        return float(self._mem[self._base + _CAPACITY])

    @capacity.setter
    def capacity(self, value: float) -> None:
        self._mem[self._base + _CAPACITY] = value

    @property
    def rate(self) -> float:
        return float(self._mem[self._base + _RATE])

    @rate.setter
    def rate(self, value: float) -> None:
        self._mem[self._base + _RATE] = value

    @property
    def level(self) -> float:
        return float(self._mem[self._base + _LEVEL])

    @level.setter
    def level(self, value: float) -> None:
        self._mem[self._base + _LEVEL] = value

    @property
    def stamp(self) -> float:
        return float(self._mem[self._base + _STAMP])

    @stamp.setter
    def stamp(self, value: float) -> None:
        self._mem[self._base + _STAMP] = value

    def resized(self, per_minute: float, now: float) -> Bucket:
        self._refill(now)
        mem, base = self._mem, self._base
        mem[base + _CAPACITY] = per_minute
        mem[base + _RATE] = per_minute / 60.0
        mem[base + _LEVEL] = min(per_minute, mem[base + _LEVEL])
        return self


class SharedBuckets:
    """The slots, their keys and the lock; a ``BucketStore`` for ``RateLimits``.

    Every method but ``forget_all`` runs with ``lock`` held by the caller (``RateLimits``).
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.lock: Any = ctx.Lock()
        self._values: Any = RawArray("d", SLOTS * FIELDS)
        self._keys: Any = RawArray("c", SLOTS * KEY_BYTES)
        self._used: Any = RawArray("i", 1)
        self._mem: Any = memoryview(self._values).cast("B").cast("d")
        self._slots: dict[bytes, int] = {}  # this process's view of the keys, filled lazily

    def _slot(self, key: str, create: bool) -> int | None:
        digest = hashlib.blake2b(key.encode(), digest_size=KEY_BYTES).digest()
        slot = self._slots.get(digest)
        if slot is not None:
            return slot
        keys, used = self._keys, int(self._used[0])
        for index in range(used):
            if keys[index * KEY_BYTES : (index + 1) * KEY_BYTES] == digest:
                self._slots[digest] = index
                return index
        if not create:
            return None
        if used >= SLOTS:
            raise RuntimeError(f"more than {SLOTS} rate-limit buckets")
        keys[used * KEY_BYTES : (used + 1) * KEY_BYTES] = digest
        self._used[0] = used + 1
        self._slots[digest] = used
        return used

    def bucket(
        self, key: str, per_minute: float, now: float, old: Bucket | None, empty: bool = False
    ) -> Bucket:
        slot = self._slot(key, create=True)
        assert slot is not None
        shared = SharedBucket(self._mem, slot)
        base = slot * FIELDS
        if self._mem[base + _ACTIVE]:
            return shared.resized(per_minute, now)
        mem = self._mem
        mem[base + _CAPACITY] = per_minute
        mem[base + _RATE] = per_minute / 60.0
        mem[base + _LEVEL] = 0.0 if empty else per_minute
        mem[base + _STAMP] = now
        mem[base + _ACTIVE] = 1.0
        return shared

    def drop(self, key: str) -> None:
        slot = self._slot(key, create=False)
        if slot is not None:
            self._mem[slot * FIELDS + _ACTIVE] = 0.0

    def forget_all(self) -> None:
        """Every bucket starts full when next configured (a reset, done once for all)."""
        with self.lock:
            for slot in range(self._used[0]):
                self._mem[slot * FIELDS + _ACTIVE] = 0.0
