"""The emulator's request handling: routing, validation, limits, faults, and timed streams.

Control endpoints (``/_emulator/...``): ``GET health`` (always open), ``GET stats`` and
``GET served`` (open: read-only, no secrets; the harness reads stats for its accounting),
``GET config`` (it lists the accepted API keys), ``POST config`` and ``POST reset``. With a
control token set (``loadkit emulator --control-token`` or ``LOADKIT_EMULATOR_CONTROL_TOKEN``)
the last three need ``Authorization: Bearer <token>`` or ``x-loadkit-control-token: <token>``;
without it they get 401 ``authentication_error``. The token is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import math
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from loadkit.emulator import jsonbody, sse
from loadkit.emulator.cache import CacheOutcome, PromptCache
from loadkit.emulator.config import (
    FAST_MODE_BETA,
    ConfigError,
    EmulatorConfig,
    ModelProfile,
    config_from_mapping,
)
from loadkit.emulator.errors import ApiError, invalid
from loadkit.emulator.http import Connection, HttpSettings, Request, chunk
from loadkit.emulator.limits import BucketSet, Limited
from loadkit.emulator.prompt import analyse_prompt
from loadkit.emulator.stats import Counters, Served, Stats, served_dict

log = logging.getLogger("loadkit.emulator")
JSON = "application/json"
MESSAGES_PATH = "/v1/messages"
SERVED_BATCH = 256  # records per chunk of GET /_emulator/served (a few ms of encoding)
# Control endpoints any client may read, with or without a control token.
OPEN_CONTROL = {("GET", "health"), ("GET", "stats"), ("GET", "served")}


@dataclass(slots=True)
class Plan:
    """What the emulator decided to serve for one admitted request."""

    input_tokens: int  # uncached, as reported in usage.input_tokens
    cache: CacheOutcome
    output_tokens: int
    stop_reason: str
    ttft_s: float  # prefill time, from the start of service
    decode_tokens_per_s: float
    fault: str | None  # "midstream_error" | "cut" | None
    fault_at_token: int


class ModelRuntime:
    """Capacity state of one model: streams being served and those waiting."""

    def __init__(self, name: str, profile: ModelProfile) -> None:
        self.name = name
        self.profile = profile
        self.active = 0
        self.queue: deque[Job] = deque()


class Job:
    """One admitted Messages request, from arrival to its last byte (or its failure)."""

    __slots__ = (
        "body_model",
        "conn",
        "counters",
        "emulator",
        "finished",
        "handle",
        "max_tokens",
        "plan",
        "prompt_breakpoints",
        "request",
        "request_id",
        "runtime",
        "sent_tokens",
        "served",
        "service_start",
        "speed",
        "stream",
        "t_first_target",
    )

    def __init__(
        self,
        emulator: Emulator,
        conn: Connection,
        request: Request,
        request_id: str,
        runtime: ModelRuntime,
        speed: str,
        stream: bool,
        max_tokens: int,
        plan: Plan,
        counters: Counters,
    ) -> None:
        self.emulator = emulator
        self.conn = conn
        self.request = request
        self.request_id = request_id
        self.runtime = runtime
        self.body_model = runtime.name
        self.speed = speed
        self.stream = stream
        self.max_tokens = max_tokens
        self.plan = plan
        self.counters = counters
        self.prompt_breakpoints = plan.cache.to_store
        self.handle: asyncio.TimerHandle | None = None
        self.sent_tokens = 0
        self.service_start = 0.0
        self.t_first_target = 0.0
        self.finished = False
        self.served: Served | None = None

    # scheduling -------------------------------------------------------------------------
    def _at(self, target: float, callback: Any) -> None:
        delay = target - time.perf_counter()
        self.handle = self.emulator.loop.call_later(max(0.0, delay), callback)

    def _early(self, target: float, callback: Any) -> bool:
        # Loop timers have millisecond granularity and may fire a little early: never send
        # before the scheduled time, so served times are never shorter than planned.
        if time.perf_counter() < target:
            self._at(target, callback)
            return True
        return False

    def begin_service(self) -> None:
        """A slot is ours: send the head of the response, then schedule the first token."""
        now = time.perf_counter()
        self.service_start = now
        plan = self.plan
        self.t_first_target = now + plan.ttft_s
        queue_ms = (now - self.request.received) * 1000.0
        if self.stream:
            headers = self.emulator.response_headers(self, queue_ms)
            headers.append(("content-type", "text/event-stream; charset=utf-8"))
            headers.append(("cache-control", "no-cache"))
            opening = self.conn.stream_head(headers) + self.emulator.message_start_chunk(self)
            self.conn.write(opening)
        self._at(self.t_first_target, self._first_token)

    def _first_token(self) -> None:
        if self._early(self.t_first_target, self._first_token):
            return
        now = time.perf_counter()
        emulator = self.emulator
        emulator.stats.record_lateness(now - self.t_first_target)
        emulator.cache.store(self.prompt_breakpoints, emulator.loop.time())
        self.prompt_breakpoints = []
        self._served_first(now)
        if not self.stream:
            end = (
                self.t_first_target + (self.plan.output_tokens - 1) / self.plan.decode_tokens_per_s
            )
            self._at(end, self._finish_unary)
            return
        self._send_tokens(1)

    def _send_tokens(self, tokens: int) -> None:
        plan = self.plan
        if plan.fault is not None and self.sent_tokens + tokens > plan.fault_at_token:
            self._fail_midstream()
            return
        self.sent_tokens += tokens
        data = self.emulator.delta_chunks[tokens]
        if self.sent_tokens >= plan.output_tokens:
            self.conn.finish_stream(data + self.emulator.closing_chunk(self))
            self.end("completed")
            return
        self.conn.write(data)
        self._at(self._next_delta_target(), self._tick)

    def _next_delta_target(self) -> float:
        last_token = min(self.sent_tokens + self.emulator.tokens_per_delta, self.plan.output_tokens)
        return self.t_first_target + (last_token - 1) / self.plan.decode_tokens_per_s

    def _tick(self) -> None:
        if self._early(self._next_delta_target(), self._tick):
            return
        remaining = self.plan.output_tokens - self.sent_tokens
        self._send_tokens(min(self.emulator.tokens_per_delta, remaining))

    def _fail_midstream(self) -> None:
        if self.plan.fault == "cut":
            self.end("cut")
            self.conn.cut()
            return
        self.conn.finish_stream(chunk(sse.error_event("overloaded_error", "Overloaded")))
        self.end("midstream_error")

    def _finish_unary(self) -> None:
        target = self.t_first_target + (self.plan.output_tokens - 1) / self.plan.decode_tokens_per_s
        if self._early(target, self._finish_unary):
            return
        plan = self.plan
        if plan.fault == "cut":
            self.end("cut")
            self.conn.cut()
            return
        if plan.fault == "midstream_error":
            self.emulator.send_error(
                self.conn, ApiError(529, "overloaded_error", "Overloaded"), self.request_id
            )
            self.end("overloaded")
            return
        self.sent_tokens = plan.output_tokens
        queue_ms = (self.service_start - self.request.received) * 1000.0
        headers = self.emulator.response_headers(self, queue_ms)
        headers.append(("content-type", JSON))
        self.conn.respond(200, headers, sse.dumps(self.emulator.message_body(self)))
        self.end("completed")

    # endings ----------------------------------------------------------------------------
    def _served_first(self, now: float) -> None:
        self.emulator.record_served(self, (now - self.request.received) * 1000.0, now)

    def client_gone(self) -> None:
        if self.finished:
            return
        if self.handle is not None:
            self.handle.cancel()
        if self.service_start == 0.0:
            self.emulator.dequeue(self)
        self.end("client_closed")

    def end(self, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        if self.conn.on_lost == self.client_gone:
            self.conn.on_lost = None
        self.handle = None
        self.emulator.job_ended(self, outcome)


class Emulator:
    """All state of one emulator process. Runs on one asyncio loop."""

    def __init__(
        self, config: EmulatorConfig, seed: int | None = None, control_token: str | None = None
    ) -> None:
        self.loop = asyncio.get_event_loop()
        self.rng = random.Random(seed)
        self.stats = Stats(config.served_log_size)
        self.http_settings = HttpSettings()
        self._control_token = control_token.encode() if control_token else None
        self._counted = False  # the Messages request being handled has been counted
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(5).hex()
        self.config = config
        self.models: dict[str, ModelRuntime] = {}
        self.class_limits: dict[str, BucketSet] = {}
        self.fast_limits = BucketSet("anthropic-fast-", {}, 0.0)
        self.cache = PromptCache(1, 1, 1)
        self._apply(config)

    # configuration ----------------------------------------------------------------------
    def _apply(self, config: EmulatorConfig) -> None:
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
        for name, limit in config.rate_limits.items():
            values = {
                "requests": limit.requests_per_minute,
                "input-tokens": limit.input_tokens_per_minute,
                "output-tokens": limit.output_tokens_per_minute,
            }
            if name in self.class_limits:
                self.class_limits[name].reconfigure(values, now)
            else:
                self.class_limits[name] = BucketSet("anthropic-ratelimit-", values, now)
        self.fast_limits.reconfigure(
            {
                "input-tokens": config.fast_mode.input_tokens_per_minute,
                "output-tokens": config.fast_mode.output_tokens_per_minute,
            },
            now,
        )
        self.cache.default_ttl_s = config.cache.default_ttl_s
        self.cache.long_ttl_s = config.cache.long_ttl_s
        self.cache.max_entries = config.cache.max_entries
        self.stats.resize_served(config.served_log_size)
        for runtime in self.models.values():
            self._drain(runtime)

    def update_config(self, patch: Any) -> EmulatorConfig:
        new = config_from_mapping(patch, "POST /_emulator/config", base=self.config)
        self._apply(new)
        return new

    def reset(self) -> None:
        self.stats.reset()
        self.cache.clear()
        self.class_limits.clear()
        self.fast_limits = BucketSet("anthropic-fast-", {}, 0.0)
        self._apply(self.config)

    # ids --------------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_01{self._id_prefix}{next(self._ids):014x}"

    # entry point ------------------------------------------------------------------------
    def handle(self, conn: Connection, request: Request) -> None:
        self._counted = False
        try:
            if conn.closed:
                self._abandoned(request)
            elif request.error is not None:
                self._refused(conn, request)
            else:
                self._route(conn, request)
        except ApiError as err:
            self.send_error(conn, err, None)
        except Exception:
            log.exception("emulator bug while handling %s %s", request.method, request.path)
            if request.path == MESSAGES_PATH and not self._counted:
                counters = self.stats.counters("unknown", "standard")
                counters.received += 1
                counters.api_error += 1
            self.send_error(conn, ApiError(500, "api_error", "emulator internal error"), None)

    def _refused(self, conn: Connection, request: Request) -> None:
        """A request refused while being read (too large, too slow, malformed)."""
        assert request.error is not None
        status, error_type, message = request.error
        if request.path == MESSAGES_PATH:
            counters = self.stats.counters("unknown", "standard")
            counters.received += 1
            counters.invalid += 1
            self._counted = True
        self.send_error(conn, ApiError(status, error_type, message), None)

    def _abandoned(self, request: Request) -> None:
        """A request that was waiting its turn on a connection that then closed."""
        if request.path != MESSAGES_PATH:
            return
        model, speed = "unknown", "standard"
        try:
            body = jsonbody.parse(request.body, self.max_json_depth)
            if isinstance(body, dict):
                name = body.get("model")
                if isinstance(name, str) and name in self.models:
                    model = name
                    if body.get("speed") == "fast" and self.models[name].profile.fast_supported:
                        speed = "fast"
        except ApiError:
            pass
        counters = self.stats.counters(model, speed)
        counters.received += 1
        counters.client_closed += 1
        self._counted = True
        self._log_rejection(self._new_id("req"), model, speed, "client_closed")

    def _route(self, conn: Connection, request: Request) -> None:
        path, method = request.path, request.method
        if path == MESSAGES_PATH:
            self.messages(conn, request)
        elif path == "/v1/messages/count_tokens":
            self._require(method, "POST")
            self._authenticate(request)
            self.count_tokens(conn, request)
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            self._require(method, "GET")
            self._authenticate(request)
            self.list_models(
                conn, request, path[len("/v1/models/") :] if path != "/v1/models" else None
            )
        elif path.startswith("/_emulator/"):
            self.control(conn, request, path[len("/_emulator/") :])
        else:
            raise ApiError(404, "not_found_error", f"Not found: {method} {path}")

    @staticmethod
    def _require(method: str, expected: str) -> None:
        if method != expected:
            raise ApiError(405, "invalid_request_error", f"Method {method} not allowed")

    def _authenticate(self, request: Request) -> str:
        key = request.headers.get("x-api-key")
        if not key:
            auth = request.headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        if not key:
            raise ApiError(401, "authentication_error", "x-api-key header is required")
        allowed = self.config.api_keys
        if allowed is not None and key not in allowed:
            raise ApiError(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            raise invalid("anthropic-version: header is required")
        return key

    # responses --------------------------------------------------------------------------
    def send_error(self, conn: Connection, err: ApiError, request_id: str | None) -> None:
        request_id = request_id or self._new_id("req")
        headers = [("request-id", request_id), ("content-type", JSON)]
        self._send_json(
            conn, err.status, sse.error_body(err.error_type, err.message, request_id), headers
        )

    @staticmethod
    def _send_json(
        conn: Connection, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> None:
        if not any(name == "content-type" for name, _ in headers):
            headers.append(("content-type", JSON))
        conn.respond(status, headers, sse.dumps(body))

    def _limit_headers(
        self, runtime: ModelRuntime, speed: str, now: float
    ) -> list[tuple[str, str]]:
        bucket_set = self.class_limits[runtime.profile.rate_limit_class]
        headers = bucket_set.headers(now)
        if speed == "fast":
            headers.extend(self.fast_limits.headers(now))
        return headers

    def response_headers(self, job: Job, queue_ms: float) -> list[tuple[str, str]]:
        plan = job.plan
        headers = [("request-id", job.request_id)]
        headers.extend(self._limit_headers(job.runtime, job.speed, self.loop.time()))
        headers.append(("x-emulator-queue-ms", f"{queue_ms:.3f}"))
        headers.append(("x-emulator-ttft-ms", f"{queue_ms + plan.ttft_s * 1000.0:.3f}"))
        headers.append(("x-emulator-otps", f"{plan.decode_tokens_per_s:.3f}"))
        headers.append(("x-emulator-output-tokens", str(plan.output_tokens)))
        return headers

    def _usage(self, job: Job, output_tokens: int) -> dict[str, Any]:
        plan = job.plan
        return {
            "input_tokens": plan.input_tokens,
            "cache_creation_input_tokens": plan.cache.creation_tokens,
            "cache_read_input_tokens": plan.cache.read_tokens,
            "output_tokens": output_tokens,
            "service_tier": "standard",
            "speed": job.speed,
        }

    def message_start_chunk(self, job: Job) -> bytes:
        start = sse.event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self._new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": job.body_model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": self._usage(job, 1),
                },
            },
        )
        return chunk(start + sse.CONTENT_BLOCK_START + sse.PING)

    def closing_chunk(self, job: Job) -> bytes:
        delta = sse.event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": job.plan.stop_reason, "stop_sequence": None},
                "usage": self._usage(job, job.plan.output_tokens),
            },
        )
        return chunk(sse.CONTENT_BLOCK_STOP + delta + sse.MESSAGE_STOP)

    def message_body(self, job: Job) -> dict[str, Any]:
        return {
            "id": self._new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": job.body_model,
            "content": [{"type": "text", "text": sse.filler_text(job.plan.output_tokens)}],
            "stop_reason": job.plan.stop_reason,
            "stop_sequence": None,
            "usage": self._usage(job, job.plan.output_tokens),
        }

    # /v1/messages -----------------------------------------------------------------------
    def _parse_body(self, request: Request) -> dict[str, Any]:
        body = jsonbody.parse(request.body, self.max_json_depth)
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.")
        return body

    def _model(self, body: dict[str, Any]) -> ModelRuntime:
        name = body.get("model")
        if name is None:
            raise invalid("model: Field required")
        if not isinstance(name, str):
            raise invalid("model: Input should be a valid string")
        runtime = self.models.get(name)
        if runtime is None:
            raise ApiError(404, "not_found_error", f"model: {name}")
        return runtime

    @staticmethod
    def _betas(request: Request) -> set[str]:
        raw = request.headers.get("anthropic-beta", "")
        return {part.strip() for part in raw.split(",") if part.strip()}

    def _speed(self, body: dict[str, Any], request: Request, runtime: ModelRuntime) -> str:
        speed = body.get("speed")
        if speed is None or speed == "standard":
            return "standard"
        if speed != "fast":
            raise invalid("speed: Input should be 'standard' or 'fast'")
        if FAST_MODE_BETA not in self._betas(request):
            raise invalid(f"speed: fast mode requires the anthropic-beta header '{FAST_MODE_BETA}'")
        if not runtime.profile.fast_supported:
            raise invalid(f"speed: fast mode is not supported for model {runtime.name}")
        return "fast"

    @staticmethod
    def _validate_sampling(body: dict[str, Any], runtime: ModelRuntime) -> tuple[int, bool]:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise invalid("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise invalid("max_tokens: Input should be an integer greater than or equal to 1")
        ceiling = runtime.profile.max_output_tokens
        if max_tokens > ceiling:
            raise invalid(
                f"max_tokens: {max_tokens} > {ceiling}, which is the maximum allowed number "
                f"of output tokens for {runtime.name}"
            )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise invalid("stream: Input should be a valid boolean")
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1
            ):
                raise invalid(f"{name}: Input should be a number between 0 and 1")
        top_k = body.get("top_k")
        if top_k is not None and (
            not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0
        ):
            raise invalid("top_k: Input should be an integer greater than or equal to 0")
        stops = body.get("stop_sequences")
        if stops is not None and (
            not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
        ):
            raise invalid("stop_sequences: Input should be a list of strings")
        return max_tokens, stream

    def messages(self, conn: Connection, request: Request) -> None:
        request_id = self._new_id("req")
        model, speed = "unknown", "standard"
        try:
            self._require(request.method, "POST")
            key = self._authenticate(request)
            body = self._parse_body(request)
            runtime = self._model(body)
            model = runtime.name
            speed = self._speed(body, request, runtime)
            max_tokens, stream = self._validate_sampling(body, runtime)
            cache_key = None
            if b'"cache_control"' in request.body:
                cache_key = f"{model}\0{speed}\0{hashlib.sha256(key.encode()).hexdigest()}".encode()
            prompt = analyse_prompt(body, cache_key)
        except ApiError as err:
            counters = self.stats.counters(model, speed)
            counters.received += 1
            self._counted = True
            if err.status == 401:
                counters.unauthorized += 1
            else:
                counters.invalid += 1
            self.send_error(conn, err, request_id)
            return

        counters = self.stats.counters(model, speed)
        counters.received += 1
        self._counted = True
        now = self.loop.time()
        rng = self.rng
        faults = self.config.faults
        draw = rng.random()
        if draw < faults.api_error_rate:
            self._reject(
                conn,
                request_id,
                counters,
                "api_error",
                ApiError(500, "api_error", "Internal server error"),
                runtime,
                speed,
            )
            return
        draw -= faults.api_error_rate
        if draw < faults.overloaded_rate:
            self._reject(
                conn,
                request_id,
                counters,
                "overloaded",
                ApiError(529, "overloaded_error", "Overloaded"),
                runtime,
                speed,
            )
            return
        draw -= faults.overloaded_rate
        fault: str | None = None
        if draw < faults.midstream_error_rate:
            fault = "midstream_error"
        elif draw - faults.midstream_error_rate < faults.connection_cut_rate:
            fault = "cut"

        profile = runtime.profile
        cache = self.cache.plan(prompt.breakpoints, profile.min_cacheable_tokens, now)
        # Cache writes are prefilled and charged like any input; cache reads are neither.
        charged_input = prompt.tokens - cache.read_tokens
        uncached = charged_input - cache.creation_tokens
        limited = self._check_limits(runtime, speed, charged_input, max_tokens, now)
        if limited is not None:
            self._rate_limited(conn, request_id, counters, runtime, speed, limited, now)
            return

        plan = self._plan(profile, speed, uncached, cache, max_tokens, fault)
        counters.in_flight += 1
        counters.input_tokens += uncached
        counters.cache_read_input_tokens += cache.read_tokens
        counters.cache_creation_input_tokens += cache.creation_tokens
        job = Job(
            self, conn, request, request_id, runtime, speed, stream, max_tokens, plan, counters
        )
        conn.on_lost = job.client_gone
        if rng.random() < faults.slow_first_byte_rate:
            job.handle = self.loop.call_later(faults.slow_first_byte_ms / 1000.0, self._admit, job)
        else:
            self._admit(job)

    def _check_limits(
        self, runtime: ModelRuntime, speed: str, input_tokens: int, max_tokens: int, now: float
    ) -> Limited | None:
        if speed == "fast":
            costs = {"input-tokens": input_tokens, "output-tokens": max_tokens}
            bucket_set = self.fast_limits
        else:
            costs = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_tokens}
            bucket_set = self.class_limits[runtime.profile.rate_limit_class]
        limited = bucket_set.check(costs, now)
        if limited is None:
            bucket_set.charge(costs)
        return limited

    def _plan(
        self,
        profile: ModelProfile,
        speed: str,
        uncached: int,
        cache: CacheOutcome,
        max_tokens: int,
        fault: str | None,
    ) -> Plan:
        rng = self.rng
        ttft_s = (
            profile.ttft_base_ms / 1000.0
            + (uncached + cache.creation_tokens) / profile.prefill_tokens_per_s
        ) * _jitter(rng, profile.ttft_jitter)
        decode = profile.decode_tokens_per_s * _jitter(rng, profile.decode_jitter)
        if speed == "fast":
            decode *= profile.fast_decode_multiplier
        wanted = max(1, self.config.output_tokens.sample(rng))
        output_tokens = min(wanted, max_tokens)
        stop_reason = "max_tokens" if wanted >= max_tokens else "end_turn"
        fault_at = rng.randint(1, max(1, output_tokens - 1)) if fault else 0
        return Plan(uncached, cache, output_tokens, stop_reason, ttft_s, decode, fault, fault_at)

    def _reject(
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
        self._log_rejection(request_id, runtime.name, speed, outcome)
        headers = [("request-id", request_id)]
        headers.extend(self._limit_headers(runtime, speed, self.loop.time()))
        self._send_json(
            conn, err.status, sse.error_body(err.error_type, err.message, request_id), headers
        )

    def _rate_limited(
        self,
        conn: Connection,
        request_id: str,
        counters: Counters,
        runtime: ModelRuntime,
        speed: str,
        limited: Limited,
        now: float,
    ) -> None:
        counters.rate_limited += 1
        self._log_rejection(request_id, runtime.name, speed, "rate_limited")
        scope = "fast mode rate limit" if speed == "fast" else "rate limit"
        message = (
            f"This request would exceed your organization's {scope} of "
            f"{int(limited.limit):,} {limited.kind} per minute. Please retry after the "
            "time given in the retry-after header."
        )
        if self.config.fractional_retry_after:
            retry_after = f"{math.ceil(limited.wait_s * 1000) / 1000:.3f}"
        else:
            retry_after = str(max(1, math.ceil(limited.wait_s)))
        headers = [("request-id", request_id), ("retry-after", retry_after)]
        headers.extend(self._limit_headers(runtime, speed, now))
        body = sse.error_body("rate_limit_error", message, request_id)
        self._send_json(conn, 429, body, headers)

    # capacity ---------------------------------------------------------------------------
    def _admit(self, job: Job) -> None:
        job.handle = None
        if job.conn.closed:
            job.client_gone()
            return
        runtime = job.runtime
        if runtime.active < runtime.profile.max_concurrent_streams:
            runtime.active += 1
            job.begin_service()
        elif len(runtime.queue) < runtime.profile.max_queue:
            job.counters.queued += 1
            runtime.queue.append(job)
        else:
            self.send_error(
                job.conn, ApiError(529, "overloaded_error", "Overloaded"), job.request_id
            )
            job.end("overloaded")

    def dequeue(self, job: Job) -> None:
        try:
            job.runtime.queue.remove(job)
        except ValueError:
            return
        job.counters.queued -= 1

    def _drain(self, runtime: ModelRuntime) -> None:
        while runtime.queue and runtime.active < runtime.profile.max_concurrent_streams:
            job = runtime.queue.popleft()
            job.counters.queued -= 1
            runtime.active += 1
            job.begin_service()

    def job_ended(self, job: Job, outcome: str) -> None:
        counters = job.counters
        counters.in_flight -= 1
        setattr(counters, outcome, getattr(counters, outcome) + 1)
        counters.output_tokens += job.sent_tokens
        self._refund(job)
        if job.service_start:
            job.runtime.active -= 1
            self._drain(job.runtime)
        if job.served is None:
            self._log_rejection(job.request_id, job.runtime.name, job.speed, outcome)
        else:
            job.served.outcome = outcome
            job.served.output_tokens = job.sent_tokens

    def _refund(self, job: Job) -> None:
        unused = job.max_tokens - job.sent_tokens
        now = self.loop.time()
        if job.speed == "fast":
            self.fast_limits.refund("output-tokens", unused, now)
        else:
            self.class_limits[job.runtime.profile.rate_limit_class].refund(
                "output-tokens", unused, now
            )

    # ground truth -----------------------------------------------------------------------
    def record_served(self, job: Job, actual_ttft_ms: float, now: float) -> None:
        plan = job.plan
        queue_ms = (job.service_start - job.request.received) * 1000.0
        job.served = Served(
            request_id=job.request_id,
            model=job.runtime.name,
            speed=job.speed,
            outcome="in_flight",
            queue_ms=queue_ms,
            planned_ttft_ms=queue_ms + plan.ttft_s * 1000.0,
            actual_ttft_ms=actual_ttft_ms,
            decode_tokens_per_s=plan.decode_tokens_per_s,
            output_tokens=plan.output_tokens,
            first_token_lateness_ms=(now - job.t_first_target) * 1000.0,
            arrived_ns=int(job.request.received * 1e9),
            first_token_ns=int(now * 1e9),
        )
        self.stats.add_served(job.served)

    def _log_rejection(self, request_id: str, model: str, speed: str, outcome: str) -> None:
        self.stats.add_served(
            Served(request_id, model, speed, outcome, 0.0, 0.0, None, 0.0, 0, None)
        )

    # other endpoints --------------------------------------------------------------------
    def count_tokens(self, conn: Connection, request: Request) -> None:
        body = self._parse_body(request)
        self._model(body)
        prompt = analyse_prompt(body, None)
        self._send_json(
            conn, 200, {"input_tokens": prompt.tokens}, [("request-id", self._new_id("req"))]
        )

    def list_models(self, conn: Connection, request: Request, model_id: str | None) -> None:
        entries = [
            {
                "type": "model",
                "id": name,
                "display_name": runtime.profile.display_name,
                "created_at": runtime.profile.created_at,
            }
            for name, runtime in self.models.items()
        ]
        headers = [("request-id", self._new_id("req"))]
        if model_id is not None:
            for entry in entries:
                if entry["id"] == model_id:
                    self._send_json(conn, 200, entry, headers)
                    return
            raise ApiError(404, "not_found_error", f"model: {model_id}")
        query = dict(part.split("=", 1) for part in request.query.split("&") if "=" in part)
        after = query.get("after_id")
        if after is not None:
            ids = [e["id"] for e in entries]
            entries = entries[ids.index(after) + 1 :] if after in ids else []
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise invalid("limit: Input should be a valid integer") from None
        page = entries[: max(1, min(limit, 1000))]
        body = {
            "data": page,
            "has_more": len(entries) > len(page),
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        self._send_json(conn, 200, body, headers)

    def control(self, conn: Connection, request: Request, action: str) -> None:
        method = request.method
        if (method, action) not in OPEN_CONTROL:
            self._authorize_control(request)
        headers: list[tuple[str, str]] = []
        if action == "stats" and method == "GET":
            snapshot = self.stats.snapshot()
            snapshot["connections_opened"] = Connection.opened
            self._send_json(conn, 200, snapshot, headers)
        elif action == "served" and method == "GET":
            self._served(conn, request)
        elif action == "config" and method == "GET":
            self._send_json(conn, 200, self.config.model_dump(mode="json", by_alias=True), headers)
        elif action == "config" and method == "POST":
            patch = jsonbody.parse(request.body or b"{}", self.max_json_depth)
            try:
                new = self.update_config(patch)
            except ConfigError as err:
                raise invalid(str(err)) from None
            self._send_json(conn, 200, new.model_dump(mode="json", by_alias=True), headers)
        elif action == "reset" and method == "POST":
            self.reset()
            self._send_json(conn, 200, {"reset": True}, headers)
        elif action == "health" and method == "GET":
            self._send_json(conn, 200, {"status": "ok"}, headers)
        else:
            raise ApiError(404, "not_found_error", f"Not found: {method} /_emulator/{action}")

    def _authorize_control(self, request: Request) -> None:
        token = self._control_token
        if token is None:
            return
        given = request.headers.get("x-loadkit-control-token")
        if given is None:
            auth = request.headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode("latin-1", "replace"), token):
            raise ApiError(
                401,
                "authentication_error",
                "This control endpoint requires the emulator's control token "
                "(Authorization: Bearer <token> or x-loadkit-control-token: <token>)",
            )

    def _served(self, conn: Connection, request: Request) -> None:
        """``GET /_emulator/served``: a JSON list of records, oldest first. ``?request_id=``
        finds one; ``?offset=&limit=`` gives a page (header ``x-emulator-served-total``
        says how many there are). A long list is sent in chunks of SERVED_BATCH records, one
        per turn of the event loop and only as fast as the client reads, so that serving it
        never delays the streams being timed."""
        query = dict(parse_qsl(request.query))
        request_id = query.get("request_id")
        if request_id is not None:
            records = self.stats.served_by_id(request_id)
        else:
            offset = _query_int(query, "offset") or 0
            records = self.stats.served_slice(offset, _query_int(query, "limit"))
        headers = [
            ("x-emulator-served-total", str(len(self.stats.served))),
            ("content-type", JSON),
        ]
        if len(records) <= SERVED_BATCH:
            self._send_json(conn, 200, [served_dict(r) for r in records], headers)
            return
        conn.write(conn.stream_head(headers))
        position = 0
        dumps = sse.dumps

        def pump() -> None:
            nonlocal position
            if conn.closed:
                return
            batch = records[position : position + SERVED_BATCH]
            inner = dumps([served_dict(r) for r in batch])[1:-1]
            piece = (b"[" if position == 0 else b",") + inner
            position += SERVED_BATCH
            if position >= len(records):
                conn.finish_stream(chunk(piece + b"]"))
                return
            conn.write(chunk(piece))
            if conn.write_paused:
                conn.on_drain = pump
            else:
                self.loop.call_soon(pump)

        pump()


def _query_int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise invalid(f"{name}: Input should be a non-negative integer")
    return int(raw)


def _jitter(rng: random.Random, sigma: float) -> float:
    """A log-normal factor with mean 1 (so jitter does not shift the average)."""
    if sigma == 0:
        return 1.0
    return math.exp(rng.gauss(-sigma * sigma / 2, sigma))
