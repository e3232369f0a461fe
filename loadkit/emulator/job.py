"""A model's serving capacity, and one admitted request timed from arrival to its last byte."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from loadkit.emulator import answer, sse, wire
from loadkit.emulator.cache import PromptCache
from loadkit.emulator.config import ModelProfile
from loadkit.emulator.errors import ApiError
from loadkit.emulator.http import Connection, Request, chunk
from loadkit.emulator.limits import RateLimits
from loadkit.emulator.plan import Plan
from loadkit.emulator.stats import Counters, Served, Stats


class JobHost(Protocol):
    """What a job reads of the emulator serving it, and tells it when it ends."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def cache(self) -> PromptCache: ...
    @property
    def limits(self) -> RateLimits: ...
    @property
    def delta_chunks(self) -> sse.DeltaChunks: ...
    @property
    def tokens_per_delta(self) -> int: ...
    @property
    def delta_events(self) -> answer.DeltaEvents: ...
    @property
    def organization_id(self) -> str: ...
    def new_id(self, prefix: str) -> str: ...
    def job_ended(self, job: Job, outcome: str) -> None: ...


class ModelRuntime:
    """Capacity state of one model: streams being served and those waiting."""

    def __init__(self, name: str, profile: ModelProfile) -> None:
        self.name = name
        self.profile = profile
        self.active = 0
        self.queue: deque[Job] = deque()

    def start_or_queue(self, job: Job) -> bool:
        """Serves the job now if a stream is free, else queues it; False if the queue is full."""
        if self.active < self.profile.max_concurrent_streams:
            self.active += 1
            job.begin_service()
        elif len(self.queue) < self.profile.max_queue:
            job.counters.queued += 1
            self.queue.append(job)
        else:
            return False
        return True

    def dequeue(self, job: Job) -> None:
        try:
            self.queue.remove(job)
        except ValueError:
            return
        job.counters.queued -= 1

    def release(self) -> None:
        """A served job ended: its stream goes to the next in the queue."""
        self.active -= 1
        self.drain()

    def drain(self) -> None:
        while self.queue and self.active < self.profile.max_concurrent_streams:
            job = self.queue.popleft()
            job.counters.queued -= 1
            self.active += 1
            job.begin_service()


class Job:
    """One admitted Messages request, from arrival to its last byte (or its failure)."""

    __slots__ = (
        "body_model",
        "conn",
        "counters",
        "finished",
        "handle",
        "host",
        "long_context",
        "max_tokens",
        "pending",
        "plan",
        "prompt_breakpoints",
        "request",
        "request_id",
        "reserved_output",
        "runtime",
        "sent_tokens",
        "served",
        "service_start",
        "speed",
        "steps",
        "stream",
        "t_first_target",
    )

    def __init__(
        self,
        host: JobHost,
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
        self.host = host
        self.conn = conn
        self.request = request
        self.request_id = request_id
        self.runtime = runtime
        self.body_model = runtime.name
        self.speed = speed
        self.stream = stream
        self.max_tokens = max_tokens
        self.reserved_output = max_tokens  # output tokens charged at admission
        self.long_context = False  # its tokens are charged to the long-context pool
        self.plan = plan
        self.counters = counters
        self.prompt_breakpoints = plan.cache.to_store
        self.handle: asyncio.TimerHandle | None = None
        self.sent_tokens = 0
        self.service_start = 0.0
        self.t_first_target = 0.0
        self.finished = False
        self.served: Served | None = None
        self.steps: Iterator[tuple[int, bytes]] | None = None  # an answer of several blocks
        self.pending = (0, b"")  # its next step: (tokens sent with it, chunk)

    # scheduling -------------------------------------------------------------------------
    def _at(self, target: float, callback: Callable[[], None]) -> None:
        delay = target - time.perf_counter()
        self.handle = self.host.loop.call_later(max(0.0, delay), callback)

    def _early(self, target: float, callback: Callable[[], None]) -> bool:
        # Loop timers have millisecond granularity and may fire a little early: never send
        # before the scheduled time, so served times are never shorter than planned.
        if time.perf_counter() < target:
            self._at(target, callback)
            return True
        return False

    def _headers(self, queue_ms: float) -> wire.Headers:
        host = self.host
        limits = host.limits.headers(
            self.runtime.profile.rate_limit_class, self.speed, host.loop.time(), self.long_context
        )
        return wire.response_headers(
            self.request_id, host.organization_id, limits, self.plan, queue_ms
        )

    def begin_service(self) -> None:
        """A slot is ours: send the head of the response, then schedule the first token."""
        now = time.perf_counter()
        self.service_start = now
        plan = self.plan
        self.t_first_target = now + plan.ttft_s
        queue_ms = (now - self.request.received) * 1000.0
        if self.stream:
            headers = self._headers(queue_ms)
            headers.append(("content-type", "text/event-stream; charset=utf-8"))
            headers.append(("cache-control", "no-cache"))
            start = wire.message_start_chunk(
                self.host.new_id("msg"), self.body_model, plan, self.speed
            )
            self.conn.write(self.conn.stream_head(headers) + start)
        self._at(self.t_first_target, self._first_token)

    def _first_token(self) -> None:
        if self._early(self.t_first_target, self._first_token):
            return
        host = self.host
        host.cache.store(self.prompt_breakpoints, host.loop.time())
        self.prompt_breakpoints = []
        first_step = None
        if self.stream and self.plan.blocks is not None:
            self.steps = answer.steps(self.plan.blocks, host.tokens_per_delta, host.delta_events)
            first_step = next(self.steps)
        # The first token's time is taken once the work before its write is done: the ground
        # truth is when its bytes leave, not when the timer fired.
        now = time.perf_counter()
        host.stats.record_lateness(now - self.t_first_target)
        self.served = self._served_record(now)
        host.stats.add_served(self.served)
        if not self.stream:
            end = (
                self.t_first_target + (self.plan.output_tokens - 1) / self.plan.decode_tokens_per_s
            )
            self._at(end, self._finish_unary)
            return
        if first_step is not None:
            self._send_step(first_step)
            return
        self._send_tokens(1)

    def _send_step(self, step: tuple[int, bytes]) -> None:
        """Sends one delta of an answer of several blocks (``answer.steps``)."""
        plan = self.plan
        tokens, data = step
        if plan.fault is not None and tokens > plan.fault_at_token:
            self._fail_midstream()
            return
        if self.sent_tokens < plan.text_start <= tokens and self.served is not None:
            self.served.first_text_ns = time.perf_counter_ns()
        self.sent_tokens = tokens
        if tokens >= plan.output_tokens:
            self.conn.finish_stream(data + wire.closing_chunk(plan, self.speed))
            self.end("completed")
            return
        self.conn.write(data)
        assert self.steps is not None
        self.pending = next(self.steps)
        self._at(self._step_target(), self._step_tick)

    def _step_target(self) -> float:
        return self.t_first_target + (self.pending[0] - 1) / self.plan.decode_tokens_per_s

    def _step_tick(self) -> None:
        if self._early(self._step_target(), self._step_tick):
            return
        self._send_step(self.pending)

    def _send_tokens(self, tokens: int) -> None:
        plan = self.plan
        if plan.fault is not None and self.sent_tokens + tokens > plan.fault_at_token:
            self._fail_midstream()
            return
        self.sent_tokens += tokens
        data = self.host.delta_chunks[tokens]
        if self.sent_tokens >= plan.output_tokens:
            self.conn.finish_stream(data + wire.closing_chunk(plan, self.speed))
            self.end("completed")
            return
        self.conn.write(data)
        self._at(self._next_delta_target(), self._tick)

    def _next_delta_target(self) -> float:
        last_token = min(self.sent_tokens + self.host.tokens_per_delta, self.plan.output_tokens)
        return self.t_first_target + (last_token - 1) / self.plan.decode_tokens_per_s

    def _tick(self) -> None:
        if self._early(self._next_delta_target(), self._tick):
            return
        remaining = self.plan.output_tokens - self.sent_tokens
        self._send_tokens(min(self.host.tokens_per_delta, remaining))

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
            overloaded = ApiError(529, "overloaded_error", "Overloaded")
            wire.send_error(self.conn, overloaded, self.request_id, self.host.organization_id)
            self.end("overloaded")
            return
        self.sent_tokens = plan.output_tokens
        headers = self._headers((self.service_start - self.request.received) * 1000.0)
        headers.append(("content-type", wire.JSON))
        body = wire.message_body(self.host.new_id("msg"), self.body_model, plan, self.speed)
        self.conn.respond(200, headers, sse.dumps(body))
        self.end("completed")

    # endings ----------------------------------------------------------------------------
    def _served_record(self, now: float) -> Served:
        """The ground truth of this job, as of its first token."""
        plan = self.plan
        queue_ms = (self.service_start - self.request.received) * 1000.0
        thinking, text, tool_use = (
            (0, plan.output_tokens, 0)
            if plan.blocks is None
            else answer.tokens_by_kind(plan.blocks, plan.output_tokens)
        )
        return Served(
            request_id=self.request_id,
            model=self.runtime.name,
            speed=self.speed,
            outcome="in_flight",
            queue_ms=queue_ms,
            planned_ttft_ms=queue_ms + plan.ttft_s * 1000.0,
            actual_ttft_ms=(now - self.request.received) * 1000.0,
            decode_tokens_per_s=plan.decode_tokens_per_s,
            output_tokens=plan.output_tokens,
            first_token_lateness_ms=(now - self.t_first_target) * 1000.0,
            arrived_ns=int(self.request.received * 1e9),
            first_token_ns=int(now * 1e9),
            # streamed answers of several blocks: set when their first text token is sent
            first_text_ns=(
                int((now + (plan.text_start - 1) / plan.decode_tokens_per_s) * 1e9)
                if plan.text_start and (plan.blocks is None or not self.stream)
                else 0
            ),
            thinking_tokens=thinking,
            text_tokens=text,
            tool_use_tokens=tool_use,
        )

    def client_gone(self) -> None:
        if self.finished:
            return
        if self.handle is not None:
            self.handle.cancel()
        if self.service_start == 0.0:
            self.runtime.dequeue(self)
        self.end("client_closed")

    def end(self, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        if self.conn.on_lost == self.client_gone:
            self.conn.on_lost = None
        self.handle = None
        self.host.job_ended(self, outcome)
