"""Continuously replenished token buckets, the way the API's rate limits work."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from loadkit.emulator.config import EmulatorConfig


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

    def __init__(self, header_prefix: str, limits: dict[str, float | None], now: float) -> None:
        self.header_prefix = header_prefix
        self.buckets: dict[str, Bucket] = {
            name: Bucket(limit, now) for name, limit in limits.items() if limit is not None
        }

    def reconfigure(self, limits: dict[str, float | None], now: float) -> None:
        updated: dict[str, Bucket] = {}
        for name, limit in limits.items():
            if limit is None:
                continue
            old = self.buckets.get(name)
            updated[name] = old.resized(limit, now) if old else Bucket(limit, now)
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
    (whose headers a fast request gets as well as its class's)."""

    def __init__(self) -> None:
        self.classes: dict[str, BucketSet] = {}
        self.fast = BucketSet("anthropic-fast-", {}, 0.0)

    def configure(self, config: EmulatorConfig, now: float) -> None:
        """Takes the new limits, keeping what has been used; a class no longer configured
        keeps its buckets."""
        for name, limit in config.rate_limits.items():
            values = {
                "requests": limit.requests_per_minute,
                "input-tokens": limit.input_tokens_per_minute,
                "output-tokens": limit.output_tokens_per_minute,
            }
            if name in self.classes:
                self.classes[name].reconfigure(values, now)
            else:
                self.classes[name] = BucketSet("anthropic-ratelimit-", values, now)
        self.fast.reconfigure(
            {
                "input-tokens": config.fast_mode.input_tokens_per_minute,
                "output-tokens": config.fast_mode.output_tokens_per_minute,
            },
            now,
        )

    def clear(self) -> None:
        """Forgets every bucket (``configure`` then starts them full)."""
        self.classes.clear()
        self.fast = BucketSet("anthropic-fast-", {}, 0.0)

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
        limited = bucket_set.check(costs, now)
        if limited is None:
            bucket_set.charge(costs)
        return limited

    def refund(self, rate_class: str, speed: str, unused_output: int, now: float) -> None:
        bucket_set = self.fast if speed == "fast" else self.classes[rate_class]
        bucket_set.refund("output-tokens", unused_output, now)

    def headers(self, rate_class: str, speed: str, now: float) -> list[tuple[str, str]]:
        headers = self.classes[rate_class].headers(now)
        if speed == "fast":
            headers.extend(self.fast.headers(now))
        return headers
