"""Serving validated Messages requests: faults, prompt cache, rate limits, capacity, accounting.

``Service`` holds all serving state of one emulator process; routing, authentication and
validation are the app's (``loadkit.emulator.app``), which hands each valid request to
``Service.serve``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from typing import Any

from loadkit.emulator import answer, sse, wire
from loadkit.emulator.cache import PromptCache
from loadkit.emulator.config import EmulatorConfig, config_from_mapping
from loadkit.emulator.content import Features
from loadkit.emulator.errors import ApiError
from loadkit.emulator.http import Connection, HttpSettings, Request
from loadkit.emulator.job import Job, ModelRuntime
from loadkit.emulator.limits import Limited, RateLimits
from loadkit.emulator.plan import draw_fault, draw_plan
from loadkit.emulator.prompt import Prompt
from loadkit.emulator.stats import Counters, Served, Stats


class Service:
    """All serving state of one emulator process. Runs on one asyncio loop."""

    def __init__(self, config: EmulatorConfig, seed: int | None = None) -> None:
        self.loop = asyncio.get_event_loop()
        self.rng = random.Random(seed)
        self.stats = Stats(config.served_log_size)
        self.http_settings = HttpSettings()
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(5).hex()
        self.config = config
        self.models: dict[str, ModelRuntime] = {}  # by alias
        self.model_ids: dict[str, ModelRuntime] = {}  # by alias and by dated ID
        self.limits = RateLimits()
        self.cache = PromptCache(1, 1, 1)
        self.delta_events = answer.DeltaEvents()
        self.configure(config)

    # configuration ----------------------------------------------------------------------
    def configure(self, config: EmulatorConfig) -> None:
        now = self.loop.time()
        self.config = config
        http = config.http
        settings = self.http_settings
        settings.max_header_bytes = http.max_header_bytes
        settings.max_body_bytes = http.max_body_bytes
        settings.header_timeout_s = http.header_timeout_s
        settings.idle_timeout_s = http.idle_timeout_s
        self.max_json_depth = http.max_json_depth
        self.tokens_per_delta = config.tokens_per_delta
        self.organization_id = config.organization_id
        self.delta_chunks = sse.DeltaChunks(config.tokens_per_delta)
        for name, profile in config.models.items():
            runtime = self.models.get(name)
            if runtime is None:
                self.models[name] = ModelRuntime(name, profile)
            else:
                runtime.profile = profile
        for name in list(self.models):
            if name not in config.models and not self.models[name].active:
                del self.models[name]
        self.limits.configure(config, now)
        self.cache.default_ttl_s = config.cache.default_ttl_s
        self.cache.long_ttl_s = config.cache.long_ttl_s
        self.cache.max_entries = config.cache.max_entries
        self.stats.resize_served(config.served_log_size)
        self.model_ids = dict(self.models)
        for runtime in self.models.values():
            if runtime.profile.snapshot_id:
                self.model_ids[runtime.profile.snapshot_id] = runtime
            runtime.drain()

    def update_config(self, patch: Any) -> EmulatorConfig:
        new = config_from_mapping(patch, "POST /_emulator/config", base=self.config)
        self.configure(new)
        return new

    def reset(self) -> None:
        self.stats.reset()
        self.cache.clear()
        self.limits.clear()
        self.configure(self.config)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_01{self._id_prefix}{next(self._ids):014x}"

    # admission --------------------------------------------------------------------------
    def serve(
        self,
        conn: Connection,
        request: Request,
        request_id: str,
        counters: Counters,
        runtime: ModelRuntime,
        speed: str,
        stream: bool,
        max_tokens: int,
        prompt: Prompt,
        context_room: int,
        features: Features | None = None,
    ) -> None:
        """Serves a valid Messages request, already counted as received. ``context_room``:
        the output tokens left in the context window after the prompt."""
        now = self.loop.time()
        rng = self.rng
        faults = self.config.faults
        fault = draw_fault(rng, faults)
        if fault == "api_error":
            error = ApiError(500, "api_error", "Internal server error")
            self._refuse(conn, request_id, counters, fault, error, runtime, speed)
            return
        if fault == "overloaded":
            error = ApiError(529, "overloaded_error", "Overloaded")
            self._refuse(conn, request_id, counters, fault, error, runtime, speed)
            return

        profile = runtime.profile
        cache = self.cache.plan(prompt.breakpoints, profile.min_cacheable_tokens, now)
        # Cache writes are prefilled and charged like any input; cache reads are neither.
        charged_input = prompt.tokens - cache.read_tokens
        uncached = charged_input - cache.creation_tokens
        # Output tokens: max_tokens reserved now and settled at the end, as the rate limits
        # page documents, or (generated_only) only the tokens generated, at the end.
        reserved = max_tokens if self.config.output_token_accounting == "reserve_max_tokens" else 0
        long_context = self.limits.is_long_context(speed, prompt.tokens)
        limited = self.limits.charge(
            profile.rate_limit_class, speed, charged_input, reserved, now, long_context
        )
        if limited is not None:
            self._rate_limited(
                conn, request_id, counters, runtime, speed, limited, now, long_context
            )
            return

        plan = draw_plan(
            rng,
            profile,
            self.config.output_tokens,
            speed,
            uncached,
            cache,
            max_tokens,
            fault,
            context_room,
            features,
            self.config.thinking_and_tools,
        )
        counters.in_flight += 1
        counters.input_tokens += uncached
        counters.cache_read_input_tokens += cache.read_tokens
        counters.cache_creation_input_tokens += cache.creation_tokens
        job = Job(
            self, conn, request, request_id, runtime, speed, stream, max_tokens, plan, counters
        )
        job.reserved_output = reserved
        job.long_context = long_context
        conn.on_lost = job.client_gone
        if rng.random() < faults.slow_first_byte_rate:
            job.handle = self.loop.call_later(faults.slow_first_byte_ms / 1000.0, self._admit, job)
        else:
            self._admit(job)

    def _refuse(
        self,
        conn: Connection,
        request_id: str,
        counters: Counters,
        outcome: str,
        err: ApiError,
        runtime: ModelRuntime,
        speed: str,
    ) -> None:
        setattr(counters, outcome, getattr(counters, outcome) + 1)
        self.log_rejection(request_id, runtime.name, speed, outcome)
        headers = wire.id_headers(request_id, self.organization_id)
        headers.extend(
            self.limits.headers(runtime.profile.rate_limit_class, speed, self.loop.time())
        )
        body = sse.error_body(err.error_type, err.message, request_id)
        wire.send_json(conn, err.status, body, headers)

    def _rate_limited(
        self,
        conn: Connection,
        request_id: str,
        counters: Counters,
        runtime: ModelRuntime,
        speed: str,
        limited: Limited,
        now: float,
        long_context: bool,
    ) -> None:
        counters.rate_limited += 1
        if limited.scope == "acceleration":
            counters.acceleration_limited += 1
        self.log_rejection(request_id, runtime.name, speed, "rate_limited")
        message = wire.rate_limit_message(limited)
        retry_after = wire.retry_after(limited.wait_s, self.config.fractional_retry_after)
        headers = wire.id_headers(request_id, self.organization_id)
        headers.append(("retry-after", retry_after))
        headers.extend(
            self.limits.headers(runtime.profile.rate_limit_class, speed, now, long_context)
        )
        body = sse.error_body("rate_limit_error", message, request_id)
        wire.send_json(conn, 429, body, headers)

    # capacity ---------------------------------------------------------------------------
    def _admit(self, job: Job) -> None:
        job.handle = None
        if job.conn.closed:
            job.client_gone()
            return
        if not job.runtime.start_or_queue(job):
            overloaded = ApiError(529, "overloaded_error", "Overloaded")
            wire.send_error(job.conn, overloaded, job.request_id, self.organization_id)
            job.end("overloaded")

    def job_ended(self, job: Job, outcome: str) -> None:
        counters = job.counters
        counters.in_flight -= 1
        setattr(counters, outcome, getattr(counters, outcome) + 1)
        counters.output_tokens += job.sent_tokens
        blocks = job.plan.blocks
        thinking = tool_use = 0
        if blocks is not None:
            thinking, _, tool_use = answer.tokens_by_kind(blocks, job.sent_tokens)
            counters.thinking_tokens += thinking
            counters.tool_use_tokens += tool_use
        self.limits.settle_output(
            job.runtime.profile.rate_limit_class,
            job.speed,
            job.reserved_output,
            job.sent_tokens,
            self.loop.time(),
            job.long_context,
        )
        if job.service_start:
            job.runtime.release()
        if job.served is None:
            self.log_rejection(job.request_id, job.runtime.name, job.speed, outcome)
        else:
            served = job.served
            served.outcome = outcome
            served.output_tokens = job.sent_tokens
            served.thinking_tokens = thinking
            served.tool_use_tokens = tool_use
            served.text_tokens = job.sent_tokens - thinking - tool_use

    # ground truth -----------------------------------------------------------------------
    def log_rejection(self, request_id: str, model: str, speed: str, outcome: str) -> None:
        self.stats.add_served(
            Served(request_id, model, speed, outcome, 0.0, 0.0, None, 0.0, 0, None)
        )
