"""Continuously replenished token buckets, the way the API's rate limits work.

One process keeps its buckets in its own memory. With ``loadkit emulator --processes N`` the
buckets live in memory shared by every process (``loadkit.emulator.sharedlimits``), so that a
limit holds across processes: each limit class has one bucket, not one per process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from loadkit.emulator.config import EmulatorConfig

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


class Bucket:
    """Holds up to ``per_minute`` units and refills at ``per_minute / 60`` units per second."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be taken (0 when it can be now).

        A cost above the capacity is admitted from a full bucket, which then goes negative.
        """
        self._refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, math.floor(self.level))

    def seconds_to_full(self, now: float) -> float:
        self._refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)

    def resized(self, per_minute: float, now: float) -> Bucket:
        """A bucket with a new limit that keeps what has been used of this one."""
        self._refill(now)
        bucket = Bucket(per_minute, now)
        bucket.level = min(per_minute, self.level)
        return bucket


class BucketStore(Protocol):
    """Where buckets live: ``key`` names one (its set and its name) across processes."""

    def bucket(self, key: str, per_minute: float, now: float, old: Bucket | None) -> Bucket:
        """The bucket for ``key`` at ``per_minute``: ``old`` resized (keeping what has been
        used), or a full one."""
        ...

    def drop(self, key: str) -> None:
        """``key``'s limit is gone: a later one starts full."""
        ...


class LocalBuckets:
    """Buckets in this process's memory."""

    def bucket(self, key: str, per_minute: float, now: float, old: Bucket | None) -> Bucket:
        return old.resized(per_minute, now) if old is not None else Bucket(per_minute, now)

    def drop(self, key: str) -> None:
        pass


def rfc3339_after(seconds: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Limited:
    """A request that a bucket refused: what it was, and how long until it would pass."""

    kind: str  # e.g. "input tokens"
    limit: float
    wait_s: float


class BucketSet:
    """Named buckets (``requests``, ``input-tokens``, ...) checked and charged together."""

    def __init__(
        self,
        header_prefix: str,
        limits: dict[str, float | None],
        now: float,
        store: BucketStore | None = None,
        key: str = "",
    ) -> None:
        self.header_prefix = header_prefix
        self.store = store or LocalBuckets()
        self.key = key
        self.buckets: dict[str, Bucket] = {}
        self.reconfigure(limits, now)

    def reconfigure(self, limits: dict[str, float | None], now: float) -> None:
        updated: dict[str, Bucket] = {}
        for name, limit in limits.items():
            key = f"{self.key}\0{name}"
            if limit is None:
                if name in self.buckets:
                    self.store.drop(key)
                continue
            updated[name] = self.store.bucket(key, limit, now, self.buckets.get(name))
        self.buckets = updated

    def check(self, costs: Mapping[str, float], now: float) -> Limited | None:
        worst: Limited | None = None
        for name, cost in costs.items():
            bucket = self.buckets.get(name)
            if bucket is None:
                continue
            wait = bucket.wait_for(cost, now)
            if wait > 0 and (worst is None or wait > worst.wait_s):
                worst = Limited(name.replace("-", " "), bucket.capacity, wait)
        return worst

    def charge(self, costs: Mapping[str, float]) -> None:
        for name, cost in costs.items():
            bucket = self.buckets.get(name)
            if bucket is not None:
                bucket.take(cost)

    def refund(self, name: str, amount: float, now: float) -> None:
        bucket = self.buckets.get(name)
        if bucket is not None and amount > 0:
            bucket.give_back(amount, now)

    def headers(self, now: float) -> list[tuple[str, str]]:
        """limit/remaining/reset per bucket; for standard limits also ``tokens-*``, which
        mirrors whichever of the input and output token buckets has the least left."""
        out: list[tuple[str, str]] = []
        tightest: tuple[float, list[tuple[str, str]]] | None = None
        for name, bucket in self.buckets.items():
            remaining = bucket.remaining(now)
            values = [
                ("limit", str(int(bucket.capacity))),
                ("remaining", str(remaining)),
                ("reset", rfc3339_after(bucket.seconds_to_full(now))),
            ]
            out.extend((f"{self.header_prefix}{name}-{part}", value) for part, value in values)
            fraction = remaining / bucket.capacity
            if name.endswith("tokens") and (tightest is None or fraction < tightest[0]):
                tightest = (fraction, values)
        if self.header_prefix == "anthropic-ratelimit-" and tightest is not None:
            out.extend((f"{self.header_prefix}tokens-{part}", value) for part, value in tightest[1])
        return out


class RateLimits:
    """The limits the emulator enforces: a standard set per rate-limit class, and fast mode's
    (whose headers a fast request gets as well as its class's).

    ``store`` and ``lock``: where the buckets live and what makes a check-and-charge atomic
    (shared by every process of a ``--processes`` emulator; this process's alone by default).
    """

    def __init__(
        self,
        store: BucketStore | None = None,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.store = store or LocalBuckets()
        self.lock: AbstractContextManager[object] = lock or contextlib.nullcontext()
        self.classes: dict[str, BucketSet] = {}
        self.fast = BucketSet("anthropic-fast-", {}, 0.0, self.store, "\0fast")

    def configure(self, config: EmulatorConfig, now: float) -> None:
        """Takes the new limits, keeping what has been used; a class no longer configured
        keeps its buckets."""
        with self.lock:
            for name, limit in config.rate_limits.items():
                values = {
                    "requests": limit.requests_per_minute,
                    "input-tokens": limit.input_tokens_per_minute,
                    "output-tokens": limit.output_tokens_per_minute,
                }
                if name in self.classes:
                    self.classes[name].reconfigure(values, now)
                else:
                    self.classes[name] = BucketSet(
                        "anthropic-ratelimit-", values, now, self.store, name
                    )
            self.fast.reconfigure(
                {
                    "input-tokens": config.fast_mode.input_tokens_per_minute,
                    "output-tokens": config.fast_mode.output_tokens_per_minute,
                },
                now,
            )

    def clear(self) -> None:
        """Forgets every bucket of this process (``configure`` then starts them full; shared
        buckets are emptied once for all processes by ``SharedBuckets.forget_all``)."""
        self.classes.clear()
        self.fast = BucketSet("anthropic-fast-", {}, 0.0, self.store, "\0fast")

    def charge(
        self, rate_class: str, speed: str, input_tokens: int, max_tokens: int, now: float
    ) -> Limited | None:
        """Charges a request's cost if every bucket has room, else says which refused it."""
        if speed == "fast":
            costs = {"input-tokens": input_tokens, "output-tokens": max_tokens}
            bucket_set = self.fast
        else:
            costs = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_tokens}
            bucket_set = self.classes[rate_class]
        with self.lock:
            limited = bucket_set.check(costs, now)
            if limited is None:
                bucket_set.charge(costs)
        return limited

    def refund(self, rate_class: str, speed: str, unused_output: int, now: float) -> None:
        bucket_set = self.fast if speed == "fast" else self.classes[rate_class]
        with self.lock:
            bucket_set.refund("output-tokens", unused_output, now)

    def settle_output(
        self, rate_class: str, speed: str, reserved: int, used: int, now: float
    ) -> None:
        """A request ended: its output-token bucket goes from the ``reserved`` tokens charged
        at admission to the ``used`` ones (giving back, or charging the rest)."""
        bucket_set = self.fast if speed == "fast" else self.classes[rate_class]
        with self.lock:
            if reserved > used:
                bucket_set.refund("output-tokens", reserved - used, now)
            elif used > reserved:
                bucket_set.charge({"output-tokens": used - reserved})

    def headers(self, rate_class: str, speed: str, now: float) -> list[tuple[str, str]]:
        with self.lock:
            headers = self.classes[rate_class].headers(now)
            if speed == "fast":
                headers.extend(self.fast.headers(now))
        return headers
