"""What a client does when fast mode's rate limit answers 429: the policies under test.

- ``none``: one call, no retries; a 429 (or any error) is a failure.
- ``retry``: the SDK's own retries, which wait as long as ``retry-after`` says.
- ``standard``: the documented pattern: the fast request is sent with retries off
  (``with_options(max_retries=0)``); a 429 re-issues it without ``speed`` (standard, with the
  default retries), losing the prompt cache; other transient errors (500, 529, connection
  errors) re-issue the original request with the default retries, up to ``reissues`` times.
- ``retry-then-standard``: on a fast 429, wait and retry fast while ``retry-after`` is at most
  ``max_wait_s`` (at most ``max_retries`` waits), else fall back as ``standard`` does.

A mid-stream ``error`` event or a cut connection is never re-issued by any policy: part of
the answer has already reached the user, so it is reported as a failure (``stream_error`` /
``connection_error``). Standard-speed requests are sent with the default retries under every
policy but ``none``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loadkit.client import RequestCancelled, RequestSpec, StreamingClient
from loadkit.record import Outcome, ResultRecord

PolicyName = Literal["none", "retry", "standard", "retry-then-standard"]
POLICIES: tuple[str, ...] = ("none", "retry", "standard", "retry-then-standard")
# Errors the documented pattern re-issues; a 429 on fast falls back instead.
TRANSIENT = (Outcome.OVERLOADED, Outcome.API_ERROR)


class FallbackSettings(BaseModel):
    """The ``fallback:`` section of a workload file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: PolicyName = "none"
    max_retries: int = Field(default=2, ge=0, le=10, description="the SDK's default retries")
    max_wait_s: float = Field(default=5.0, ge=0, description="retry-then-standard's bound")
    reissues: int = Field(default=2, ge=0, le=10, description="re-issues on transient errors")


def _transient(record: ResultRecord) -> bool:
    if record.outcome in TRANSIENT:
        return True
    # A connection error before any byte of the answer (no first token) is safe to re-issue.
    return record.outcome is Outcome.CONNECTION_ERROR and not record.t_first_token


class FallbackPolicy:
    """Sends one logical request under a policy; every attempt lands in one record."""

    def __init__(self, client: StreamingClient, settings: FallbackSettings) -> None:
        self.client = client
        self.settings = settings
        # Cache reads last seen per (model, speed), to tell what a fallback lost.
        self._cache_reads: dict[tuple[str, str], int] = {}

    @property
    def name(self) -> str:
        return self.settings.policy

    def send(self, spec: RequestSpec) -> ResultRecord:
        settings = self.settings
        if settings.policy == "none":
            record = self.client.send(spec, max_retries=0)
        elif settings.policy == "retry" or spec.speed != "fast":
            record = self._with_reissues(spec, None, settings.max_retries)
        else:
            record = self._fast_with_fallback(spec)
        if record.ok and record.served_speed:
            self._cache_reads[(record.model, record.served_speed)] = record.cache_read_input_tokens
        return record

    def _with_reissues(
        self, spec: RequestSpec, record: ResultRecord | None, max_retries: int | None
    ) -> ResultRecord:
        record = self.client.send(spec, record, max_retries=max_retries)
        for _ in range(self.settings.reissues if self.settings.policy != "retry" else 0):
            if not _transient(record):
                break
            record = self.client.send(spec, record, max_retries=self.settings.max_retries)
        return record

    def _fast_with_fallback(self, spec: RequestSpec) -> ResultRecord:
        settings = self.settings
        record = self.client.send(spec, max_retries=0)
        waits = 0
        reissues = settings.reissues
        while not record.ok:
            if record.outcome is Outcome.RATE_LIMITED:
                retry_after = record.attempts[-1].retry_after_s
                if (
                    settings.policy == "retry-then-standard"
                    and retry_after is not None
                    and retry_after <= settings.max_wait_s
                    and waits < settings.max_retries
                ):
                    waits += 1
                    _wait(retry_after, record)
                    record = self.client.send(spec, record, max_retries=0)
                    continue
                return self._fall_back(spec, record)
            if _transient(record) and reissues > 0:
                reissues -= 1
                record = self.client.send(spec, record, max_retries=settings.max_retries)
                if record.outcome is Outcome.RATE_LIMITED:
                    return self._fall_back(spec, record)
                continue
            break
        return record

    def _fall_back(self, spec: RequestSpec, record: ResultRecord) -> ResultRecord:
        standard = dataclasses.replace(spec, speed="standard")
        record.fell_back = True
        record = self._with_reissues(standard, record, self.settings.max_retries)
        had = self._cache_reads.get((spec.model, spec.speed), 0)
        record.cache_tokens_lost = max(0, had - record.cache_read_input_tokens)
        return record


def _wait(seconds: float, record: ResultRecord) -> None:
    """Wait out a retry-after; a run that ends meanwhile cancels the request, reported."""
    try:
        time.sleep(seconds)
    except BaseException as err:  # GreenletExit, KeyboardInterrupt: the run is ending
        record.outcome = Outcome.CANCELLED
        record.error_type = "run_ended"
        record.error_message = f"{type(err).__name__} while waiting out retry-after"
        raise RequestCancelled(record) from err
