"""Continuously replenished token buckets, the way the API's rate limits work, and the
organisation's acceleration limit.

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

from loadkit.emulator.config import LONG_CONTEXT_TOKENS, AccelerationLimit, EmulatorConfig

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

    def bucket(
        self, key: str, per_minute: float, now: float, old: Bucket | None, empty: bool = False
    ) -> Bucket:
        """The bucket for ``key`` at ``per_minute``: ``old`` resized (keeping what has been
        used), or a new one, full (or ``empty``)."""
        ...

    def drop(self, key: str) -> None:
        """``key``'s limit is gone: a later one starts full."""
        ...


class LocalBuckets:
    """Buckets in this process's memory."""

    def bucket(
        self, key: str, per_minute: float, now: float, old: Bucket | None, empty: bool = False
    ) -> Bucket:
        if old is not None:
            return old.resized(per_minute, now)
        bucket = Bucket(per_minute, now)
        if empty:
            bucket.level = 0.0
        return bucket

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
    scope: str = "standard"  # whose limit: "standard", "long_context", "fast", "acceleration"


class BucketSet:
    """Named buckets (``requests``, ``input-tokens``, ...) checked and charged together."""

    def __init__(
        self,
        header_prefix: str,
        limits: dict[str, float | None],
        now: float,
        store: BucketStore | None = None,
        key: str = "",
        scope: str = "standard",
    ) -> None:
        self.header_prefix = header_prefix
        self.store = store or LocalBuckets()
        self.key = key
        self.scope = scope
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
                worst = Limited(name.replace("-", " "), bucket.capacity, wait, self.scope)
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

    def headers(self, now: float, names: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        """limit/remaining/reset per bucket (those in ``names``, default all); for standard
        limits also ``tokens-*``, over input and output tokens together: the rate limits page
        ("Response headers") says they show "the most restrictive limit currently in effect",
        which without Workspace limits (the emulator has none) is "the total tokens
        remaining, where total is the sum of input and output tokens"."""
        out: list[tuple[str, str]] = []
        total_limit = total_remaining = 0
        total_reset = 0.0
        token_buckets = 0
        for name, bucket in self.buckets.items():
            if names is not None and name not in names:
                continue
            remaining = bucket.remaining(now)
            to_full = bucket.seconds_to_full(now)
            prefix = f"{self.header_prefix}{name}-"
            out.append((f"{prefix}limit", str(int(bucket.capacity))))
            out.append((f"{prefix}remaining", str(remaining)))
            out.append((f"{prefix}reset", rfc3339_after(to_full)))
            if name.endswith("tokens"):
                token_buckets += 1
                total_limit += int(bucket.capacity)
                total_remaining += remaining
                total_reset = max(total_reset, to_full)
        if self.header_prefix == "anthropic-ratelimit-" and token_buckets:
            prefix = f"{self.header_prefix}tokens-"
            out.append((f"{prefix}limit", str(total_limit)))
            out.append((f"{prefix}remaining", str(total_remaining)))
            out.append((f"{prefix}reset", rfc3339_after(total_reset)))
        return out


class Acceleration:
    """The organisation's acceleration limit: "You might also encounter 429 errors due to
    acceleration limits on the API if your organization has a sharp increase in usage"
    (rate limits page, "Rate limits"). The page gives no numbers; loadkit's model: requests
    (of every model and speed) pass through one allowance bucket that refills at ``growth``
    times the organisation's recent request rate (an exponential average over ``window_s``),
    never less than ``initial_requests_per_minute``, and holds ``burst_s`` seconds of it.
    Usage that grows steadily raises the allowance with it; a sudden jump outruns it.

    Two buckets of the store hold the state, so that it is shared like the rate limits: the
    allowance (its capacity and rate set at each check) and the recent rate (its ``level``,
    in requests per second, decayed from its ``stamp``).
    """

    def __init__(self, store: BucketStore, settings: AccelerationLimit, now: float) -> None:
        self.store = store
        self.settings = settings
        self.allowance: Bucket | None = None
        self.usage: Bucket | None = None
        self.configure(settings, now)

    def configure(self, settings: AccelerationLimit, now: float) -> None:
        self.settings = settings
        if not settings.enabled:
            if self.allowance is not None:
                self.store.drop(ACCELERATION_ALLOWANCE)
                self.store.drop(ACCELERATION_USAGE)
            self.allowance = self.usage = None
            return
        floor_rps = settings.initial_requests_per_minute / 60.0
        if self.usage is not None:
            self._decay(now)
        self.allowance = self.store.bucket(
            ACCELERATION_ALLOWANCE, floor_rps * settings.burst_s, now, self.allowance
        )
        # The recent rate is never refilled: a resize refills at the old rate (0) first.
        self.usage = self.store.bucket(
            ACCELERATION_USAGE, MAX_RECENT_RATE, now, self.usage, empty=True
        )
        self.usage.rate = 0.0

    def _decay(self, now: float) -> None:
        usage = self.usage
        assert usage is not None
        elapsed = now - usage.stamp
        if elapsed > 0:
            usage.level = usage.level * math.exp(-elapsed / self.settings.window_s)
            usage.stamp = now

    def check(self, now: float) -> Limited | None:
        """Refills the allowance at the rate the recent usage earns; refuses if it is empty.
        Runs under ``RateLimits.lock``."""
        allowance, usage = self.allowance, self.usage
        if allowance is None or usage is None:
            return None
        settings = self.settings
        self._decay(now)
        rate = max(settings.initial_requests_per_minute / 60.0, settings.growth * usage.level)
        allowance.capacity = rate * settings.burst_s
        allowance.rate = rate
        allowance._refill(now)
        if allowance.level >= 1.0:
            return None
        return Limited("requests", rate * 60.0, (1.0 - allowance.level) / rate, "acceleration")

    def admit(self) -> None:
        """Counts an admitted request (after a ``check`` that passed, under the same lock)."""
        if self.allowance is not None and self.usage is not None:
            self.allowance.level -= 1.0
            self.usage.level += 1.0 / self.settings.window_s


ACCELERATION_ALLOWANCE = "\0acceleration\0allowance"
ACCELERATION_USAGE = "\0acceleration\0usage"
MAX_RECENT_RATE = 1e15  # the recent-rate bucket's capacity: never a bound


class RateLimits:
    """The limits the emulator enforces: a standard set per rate-limit class, a long-context
    pool per class, fast mode's (whose headers a fast request gets as well as its class's),
    and the organisation's acceleration limit over all of them.

    A standard-speed request of more than ``LONG_CONTEXT_TOKENS`` input tokens draws its
    tokens from its class's long-context pool: "dedicated rate limits apply to requests
    exceeding 200K tokens" (rate limits page, "Long context rate limits", as of its
    2025-08 version), "separate limits for <=200K and >200K input tokens" (fast mode page,
    "Rate limits"). The page lists input and output tokens per minute for that pool, no
    requests: the request is counted by its class's requests limit. No header of its own is
    documented: such a request's ``anthropic-ratelimit-input-tokens-*``,
    ``-output-tokens-*`` and ``-tokens-*`` headers describe the long-context pool, its
    ``-requests-*`` its class. Fast mode's limit "covers the full context range".

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
        self.long_context: dict[str, BucketSet] = {}
        self.fast = BucketSet("anthropic-fast-", {}, 0.0, self.store, "\0fast", "fast")
        self.acceleration = Acceleration(self.store, AccelerationLimit(enabled=False), 0.0)

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
                long_values = {
                    "input-tokens": limit.long_context_input_tokens_per_minute,
                    "output-tokens": limit.long_context_output_tokens_per_minute,
                }
                if name in self.classes:
                    self.classes[name].reconfigure(values, now)
                    self.long_context[name].reconfigure(long_values, now)
                else:
                    self.classes[name] = BucketSet(
                        "anthropic-ratelimit-", values, now, self.store, name
                    )
                    self.long_context[name] = BucketSet(
                        "anthropic-ratelimit-",
                        long_values,
                        now,
                        self.store,
                        f"{name}\0long",
                        "long_context",
                    )
            self.fast.reconfigure(
                {
                    "input-tokens": config.fast_mode.input_tokens_per_minute,
                    "output-tokens": config.fast_mode.output_tokens_per_minute,
                },
                now,
            )
            self.acceleration.configure(config.acceleration_limit, now)

    def clear(self) -> None:
        """Forgets every bucket of this process (``configure`` then starts them full; shared
        buckets are emptied once for all processes by ``SharedBuckets.forget_all``)."""
        self.classes.clear()
        self.long_context.clear()
        self.fast = BucketSet("anthropic-fast-", {}, 0.0, self.store, "\0fast", "fast")
        self.acceleration = Acceleration(self.store, AccelerationLimit(enabled=False), 0.0)

    @staticmethod
    def is_long_context(speed: str, input_tokens: int) -> bool:
        """Whether a request draws on its class's long-context pool (``input_tokens``: all
        of its prompt, cached or not)."""
        return speed != "fast" and input_tokens > LONG_CONTEXT_TOKENS

    def _token_set(self, rate_class: str, speed: str, long_context: bool) -> BucketSet:
        if speed == "fast":
            return self.fast
        return self.long_context[rate_class] if long_context else self.classes[rate_class]

    def charge(
        self,
        rate_class: str,
        speed: str,
        input_tokens: int,
        max_tokens: int,
        now: float,
        long_context: bool = False,
    ) -> Limited | None:
        """Charges a request's cost if every bucket and the acceleration limit have room,
        else says which refused it (and charges nothing)."""
        tokens = {"input-tokens": input_tokens, "output-tokens": max_tokens}
        token_set = self._token_set(rate_class, speed, long_context)
        request_set = None if speed == "fast" else self.classes[rate_class]
        with self.lock:
            if request_set is None:
                limited = token_set.check(tokens, now)
            elif token_set is request_set:
                costs = {"requests": 1, **tokens}
                limited = request_set.check(costs, now)
            else:
                limited = request_set.check({"requests": 1}, now) or token_set.check(tokens, now)
            if limited is None:
                limited = self.acceleration.check(now)
            if limited is None:
                if request_set is not None:
                    request_set.charge({"requests": 1})
                token_set.charge(tokens)
                self.acceleration.admit()
        return limited

    def refund(
        self,
        rate_class: str,
        speed: str,
        unused_output: int,
        now: float,
        long_context: bool = False,
    ) -> None:
        bucket_set = self._token_set(rate_class, speed, long_context)
        with self.lock:
            bucket_set.refund("output-tokens", unused_output, now)

    def settle_output(
        self,
        rate_class: str,
        speed: str,
        reserved: int,
        used: int,
        now: float,
        long_context: bool = False,
    ) -> None:
        """A request ended: its output-token bucket goes from the ``reserved`` tokens charged
        at admission to the ``used`` ones (giving back, or charging the rest)."""
        bucket_set = self._token_set(rate_class, speed, long_context)
        with self.lock:
            if reserved > used:
                bucket_set.refund("output-tokens", reserved - used, now)
            elif used > reserved:
                bucket_set.charge({"output-tokens": used - reserved})

    def headers(
        self, rate_class: str, speed: str, now: float, long_context: bool = False
    ) -> list[tuple[str, str]]:
        with self.lock:
            if long_context and speed != "fast":
                headers = self.classes[rate_class].headers(now, ("requests",))
                headers.extend(self.long_context[rate_class].headers(now))
            else:
                headers = self.classes[rate_class].headers(now)
            if speed == "fast":
                headers.extend(self.fast.headers(now))
        return headers
