"""The streaming client: one request through the official SDK, timed as its bytes arrive.

The SDK builds and sends the request (auth, headers, betas, retries, error mapping); the body
is then read as raw bytes, and only the rare events (message_start, message_delta, error) are
parsed. Deltas are counted, never decoded. Each HTTP attempt is seen through httpx event
hooks, so the SDK's own retries are recorded too.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anthropic
import httpx2

from loadkit.catalog import FAST_MODE_BETA, INTERLEAVED_THINKING_BETA, cost_usd
from loadkit.content import Answer
from loadkit.ratelimit_cause import cause_of_429
from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.transport import LeanTransport

logger = logging.getLogger(__name__)
HTTP_STACKS = ("lean", "httpx")
# httpx's own pool checks every pooled connection on each request; shards keep that small.
HTTPX_POOL_SHARDS = 8
DELTA = b"event: content_block_delta"
EVENT = b"event: "
_now = time.perf_counter_ns
# The request being sent by this greenlet/thread, and the speed of its current call.
_current: contextvars.ContextVar[tuple[ResultRecord, str] | None] = contextvars.ContextVar(
    "loadkit_exchange", default=None
)
BAD_USAGE = "bad_usage"  # error type of a request whose answer's usage is not counts
RATE_LIMIT_PREFIXES = ("anthropic-ratelimit-", "anthropic-fast-")
STATUS_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(slots=True)
class RequestSpec:
    """Everything needed to send one Messages request."""

    model: str
    speed: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: Any = None
    temperature: float | None = None
    stop_sequences: list[str] = field(default_factory=list)
    scenario: str = "workload"
    prompt_tokens_target: int = 0
    cache_ttl: str = "5m"
    t_intended: int = 0
    # where the request came from, carried into its record for grouping
    dataset: str = ""  # the prompt dataset's name ("" for synthetic prompts)
    output_target: int = 0  # output tokens asked for in the prompt (0: none asked)
    session_id: str = ""  # the conversation (or trace session) it belongs to
    turn: int = 0  # its turn in that conversation, from 1 (0: not part of one)
    thinking_budget: int = 0  # extended thinking's budget_tokens (0: no thinking)
    interleaved_thinking: bool = False  # the beta: thinking after tool results too
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    # content mode: the client rebuilds the answer's blocks into it (loadkit.content)
    answer: Answer | None = None
    t_tool_call_end: int = 0  # a tool_result turn: when the answer asking for it ended


class RequestCancelled(BaseException):
    """The request was interrupted (e.g. the run ended); ``record`` says how far it got."""

    def __init__(self, record: ResultRecord) -> None:
        super().__init__("request cancelled")
        self.record = record


def _event_json(block: bytes, name: bytes) -> dict[str, Any] | None:
    marker = EVENT + name + b"\ndata: "
    start = block.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = block.find(b"\n", start)
    try:
        data = json.loads(block[start : end if end >= 0 else len(block)])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class SDKClient(anthropic.Anthropic):
    """The SDK's client, with one pure step of its request building remembered.

    ``_prepare_url`` joins the base URL and the path (two URL parses, ~60 us of each
    request here) and depends on nothing else; its results are immutable ``httpx`` URLs.
    A test checks that the SDK still calls it and that the URLs are the SDK's own.
    """

    _loadkit_urls: dict[str, httpx2.URL] | None = None
    _loadkit_urls_base: httpx2.URL | None = None  # the base URL those were joined to

    def _prepare_url(self, url: str) -> httpx2.URL:
        cache = self._loadkit_urls
        if cache is None or self._loadkit_urls_base is not self._base_url:
            cache = self._loadkit_urls = {}
            self._loadkit_urls_base = self._base_url
        prepared = cache.get(url)
        if prepared is None:
            prepared = cache[url] = super()._prepare_url(url)
        return prepared


class StreamingClient:
    """One per process: a shared SDK client whose connection pool fits the user count.

    ``pool_size`` None lets the pool grow to one connection per concurrent user.
    ``http_stack`` "lean" sends through loadkit's own HTTP/1.1 transport (the default, far
    cheaper per event); "httpx" through httpx's standard one (proxies, HTTP/2 if installed).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        pool_size: int | None = None,
        max_retries: int = 0,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        http_stack: str = "lean",
    ) -> None:
        if http_stack not in HTTP_STACKS:
            raise ValueError(
                f"http_stack must be one of {', '.join(HTTP_STACKS)}, not {http_stack!r}"
            )
        ssl_context = httpx2.create_ssl_context()
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self._on_request],
            "response": [self._on_response],
        }
        timeout = httpx2.Timeout(timeout_s, connect=connect_timeout_s)
        http_clients: list[httpx2.Client]
        if http_stack == "lean":
            _warn_if_proxied(base_url)
            self.transport: LeanTransport | None = LeanTransport(ssl_context, pool_size)
            http_clients = [
                httpx2.Client(transport=self.transport, timeout=timeout, event_hooks=hooks)
            ]
        else:
            self.transport = None
            limits = httpx2.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
            http_clients = [
                httpx2.Client(verify=ssl_context, limits=limits, timeout=timeout, event_hooks=hooks)
                for _ in range(HTTPX_POOL_SHARDS)
            ]
        # A span per request would load the tracing backend as much as the API, and costs
        # ~70 us of CPU per request here: off unless the environment asks for it.
        telemetry: Literal[False] | None = (
            None if os.environ.get("ANTHROPIC_OPEN_TELEMETRY") else False
        )
        self._shards: list[anthropic.Anthropic] = [
            SDKClient(
                api_key=api_key,
                base_url=base_url,
                max_retries=max_retries,
                http_client=http,
                open_telemetry=telemetry,
            )
            for http in http_clients
        ]
        self.sdk = self._shards[0]
        self._next_shard = itertools.count()
        self._per_retries: dict[tuple[int, int], anthropic.Anthropic] = {}

    def close(self) -> None:
        for sdk in self._shards:
            sdk.close()

    def warm_up(self) -> None:
        """Run the whole request path once per speed against a canned local answer.

        The SDK builds parts of itself on first use (type transforms, response wrappers):
        tens of milliseconds that would otherwise land on the first requests of a run, and
        on an open-loop schedule. Nothing is sent to the target.
        """
        canned = (
            b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":'
            b'"message","role":"assistant","model":"x","content":[],"stop_reason":null,'
            b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"x"}}\n\n'
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
        transport = httpx2.MockTransport(
            lambda request: httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, content=canned
            )
        )
        local = StreamingClient.__new__(StreamingClient)
        http = httpx2.Client(
            transport=transport,
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
        )
        local.sdk = anthropic.Anthropic(
            api_key="warm-up", base_url="http://warm-up.invalid", http_client=http
        )
        local._shards = [local.sdk]
        local._next_shard = itertools.count()
        local._per_retries = {}
        messages = [{"role": "user", "content": "warm up"}]
        for speed in ("standard", "fast"):
            local.send(RequestSpec("claude-opus-4-6", speed, 1, messages), max_retries=0)
        local.close()

    def count_tokens(
        self, model: str, messages: list[dict[str, Any]], system: Any, retries: int = 0
    ) -> int:
        """``usage.input_tokens`` of a request, from the target's count_tokens endpoint;
        ``retries``: the SDK's own (429s wait out retry-after), for long series of counts."""
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        if system is not None:
            kwargs["system"] = system
        sdk = self.sdk.with_options(max_retries=retries) if retries else self.sdk
        return sdk.messages.count_tokens(**kwargs).input_tokens

    # attempts, seen through httpx's hooks ---------------------------------------------------
    @staticmethod
    def _on_request(request: httpx2.Request) -> None:
        exchange = _current.get()
        if exchange is None:
            return
        record, speed = exchange
        now = _now()
        attempts = record.attempts
        waited = 0.0
        if attempts:
            previous = attempts[-1]
            waited = (now - (previous.t_headers or previous.t_send)) / 1e9
        attempt = Attempt(speed, now, waited_s=waited)
        attempts.append(attempt)
        first = len(attempts) == 1
        if first:
            record.t_send = now

        def sent(event: str, info: Any) -> None:
            # t_send is read just before the request's body is written (httpcore traces this
            # before its body write; the lean transport before its one write of head and
            # body): the server cannot start before those bytes, so t_send is never later
            # than the send, while the transport's own work before it (pool, connect, TLS
            # handshake, the head's write on httpcore) is not counted as the server's.
            # Read once the write returned, it could be late by any pause in between (a
            # GIL hand-over, a collection) while the answer's arrival is stamped by the
            # kernel: TTFT would come out short, even negative.
            if event.endswith("send_request_body.started"):
                attempt.t_send = started = _now()
                if first:
                    record.t_send = started
            elif event.endswith("send_request_body.complete"):
                attempt.sent = True  # the whole request was written

        request.extensions["trace"] = sent

    @staticmethod
    def _on_response(response: httpx2.Response) -> None:
        exchange = _current.get()
        if exchange is None or not exchange[0].attempts:
            return
        record = exchange[0]
        attempt = record.attempts[-1]
        attempt.t_headers = _now()
        attempt.status = status = response.status_code
        headers = response.headers
        limits = record.rate_limits
        for name, value in headers.items():
            if name.startswith(RATE_LIMIT_PREFIXES):
                limits[name] = value
        if status >= 400:
            attempt.error_type = STATUS_ERROR_TYPES.get(status, f"http_{status}")
            retry_after = headers.get("retry-after")
            if retry_after is not None:
                try:
                    attempt.retry_after_s = float(retry_after)
                except ValueError:
                    attempt.retry_after_s = None
            if status == 429:
                attempt.rate_limit_cause = cause_of_429(
                    headers, attempt.speed, record.prompt_tokens_target, record.max_tokens
                )

    # one request ----------------------------------------------------------------------------
    def _pick_sdk(self, max_retries: int | None) -> anthropic.Anthropic:
        shard = next(self._next_shard) % len(self._shards)
        sdk = self._shards[shard]
        if max_retries is None:
            return sdk
        key = (shard, max_retries)
        found = self._per_retries.get(key)
        if found is None:
            found = self._per_retries[key] = sdk.with_options(max_retries=max_retries)
        return found

    def send(
        self,
        spec: RequestSpec,
        record: ResultRecord | None = None,
        max_retries: int | None = None,
    ) -> ResultRecord:
        """Send ``spec`` through the SDK and read its stream into a result record.

        With ``record``, this call continues an earlier one (a fallback or a re-issue): its
        attempts are added to the same record, whose times still start at the first send.
        ``max_retries`` overrides the SDK's retries for this call only.
        """
        if record is None:
            record = ResultRecord(
                model=spec.model,
                speed=spec.speed,
                scenario=spec.scenario,
                prompt_tokens_target=spec.prompt_tokens_target,
                max_tokens=spec.max_tokens,
                t_intended=spec.t_intended,
                dataset=spec.dataset,
                output_target=spec.output_target,
                session_id=spec.session_id,
                turn=spec.turn,
                t_tool_call_end=spec.t_tool_call_end,
            )
        else:
            record.restart()
        token = _current.set((record, spec.speed))
        try:
            self._exchange(spec, record, self._pick_sdk(max_retries))
        except anthropic.APIStatusError as err:
            self._status_failure(record, err)
        except (anthropic.APITimeoutError, httpx2.TimeoutException) as err:
            self._fail(record, Outcome.TIMEOUT, "timeout", str(err) or type(err).__name__)
        except (anthropic.APIConnectionError, httpx2.TransportError) as err:
            cause = err.__cause__ or err
            self._fail(record, Outcome.CONNECTION_ERROR, type(cause).__name__, str(cause))
        except Exception as err:  # a bug or an unexpected library error: still accounted
            self._fail(record, Outcome.CLIENT_ERROR, type(err).__name__, str(err))
        except BaseException as err:  # GreenletExit, KeyboardInterrupt: the run is ending
            self._fail(record, Outcome.CANCELLED, "run_ended", type(err).__name__)
            raise RequestCancelled(record) from err
        finally:
            _current.reset(token)
            self._finish(record, spec)
        return record

    def _exchange(self, spec: RequestSpec, record: ResultRecord, sdk: anthropic.Anthropic) -> None:
        kwargs: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": spec.max_tokens,
            "messages": spec.messages,
            "stream": True,
        }
        if spec.system is not None:
            kwargs["system"] = spec.system
        if spec.stop_sequences:
            kwargs["stop_sequences"] = spec.stop_sequences
        if spec.temperature is not None:
            kwargs["extra_body"] = {"temperature": spec.temperature}
        if spec.thinking_budget:
            kwargs["thinking"] = {"type": "enabled", "budget_tokens": spec.thinking_budget}
        if spec.tools is not None:
            kwargs["tools"] = spec.tools
        if spec.tool_choice is not None:
            kwargs["tool_choice"] = spec.tool_choice
        if spec.speed == "fast":
            kwargs["betas"] = [FAST_MODE_BETA]
            kwargs["speed"] = "fast"
            api: Any = sdk.beta.messages
        else:
            api = sdk.messages
        if spec.interleaved_thinking:
            kwargs["betas"] = [*kwargs.get("betas", ()), INTERLEAVED_THINKING_BETA]
            api = sdk.beta.messages
        with api.with_streaming_response.create(**kwargs) as response:
            http_response: httpx2.Response = response.http_response
            record.status = http_response.status_code
            record.request_id = http_response.headers.get("request-id")
            encoded = http_response.headers.get("content-encoding", "identity") != "identity"
            lean_body = http_response.extensions.get("loadkit_body")
            reads: Iterator[tuple[int, bytes]]
            if lean_body is not None and not encoded:
                # the arrival times of the bytes, not the (later) times they were read
                reads = lean_body.timed_reads()
                if record.attempts:
                    record.attempts[-1].t_headers = lean_body.t_headers
                record.t_headers = lean_body.t_headers
            else:
                record.t_headers = record.attempts[-1].t_headers if record.attempts else _now()
                chunks = http_response.iter_bytes() if encoded else http_response.iter_raw()
                reads = ((_now(), chunk) for chunk in chunks)
            answer = spec.answer
            if answer is not None:
                answer.clear()
            try:
                self._read_events(reads, record, answer)
            finally:
                if answer is not None:
                    answer.settle(record)

    @staticmethod
    def _read_events(
        reads: Iterator[tuple[int, bytes]], record: ResultRecord, answer: Answer | None = None
    ) -> None:
        """The hot loop: one timestamp per read, deltas counted, rare events parsed (in
        content mode, every content event is handed to ``answer`` as well)."""
        carry = b""
        first = last = 0
        deltas = 0
        itl = record.itl_ns
        try:
            for now, chunk in reads:
                if carry:
                    chunk = carry + chunk
                if chunk.endswith(b"\n\n"):
                    carry = b""
                else:
                    cut = chunk.rfind(b"\n\n") + 2
                    carry, chunk = chunk[cut:], chunk[:cut]
                    if not chunk:
                        continue
                if answer is not None:
                    answer.feed(chunk, now)
                n = chunk.count(DELTA)
                if n:
                    if first:
                        itl.append(now - last)
                    else:
                        first = now
                    last = now
                    deltas += n
                    if n == chunk.count(EVENT):
                        continue
                if StreamingClient._rare_events(chunk, record, now):
                    # Read on to the end of the body (the chunked terminator follows at once):
                    # a connection left mid-body is closed, not reused for the next request.
                    for _ in reads:
                        pass
                    break
        finally:
            record.t_first_token, record.t_last_token, record.deltas = first, last, deltas
        if not record.t_end:
            record.t_end = _now()
            if record.outcome is Outcome.OK:
                record.outcome = Outcome.CONNECTION_ERROR
                record.error_type = "incomplete_stream"
                record.error_message = "the stream ended before message_stop"

    @staticmethod
    def _rare_events(block: bytes, record: ResultRecord, now: int) -> bool:
        """Handle message_start, message_delta, error and message_stop; True at the end."""
        if not record.t_message_start:
            start = _event_json(block, b"message_start")
            if start is not None:
                record.t_message_start = now
                message = start.get("message") or {}
                record.request_id = record.request_id or message.get("id")
                _take_usage(record, message.get("usage") or {})
        delta = _event_json(block, b"message_delta")
        if delta is not None:
            record.stop_reason = (delta.get("delta") or {}).get("stop_reason")
            _take_usage(record, delta.get("usage") or {})
        if EVENT + b"error\n" in block:
            error = (_event_json(block, b"error") or {}).get("error") or {}
            record.outcome = Outcome.STREAM_ERROR
            record.error_type = error.get("type", "stream_error")
            record.error_message = error.get("message", "")
            record.t_end = now
            return True
        if EVENT + b"message_stop" in block:
            record.t_end = now
            return True
        return False

    @staticmethod
    def _status_failure(record: ResultRecord, err: anthropic.APIStatusError) -> None:
        status = err.status_code
        body: dict[str, Any] = err.body if isinstance(err.body, dict) else {}
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        error_type = error.get("type") or STATUS_ERROR_TYPES.get(status, f"http_{status}")
        if status == 429:
            outcome = Outcome.RATE_LIMITED
        elif status == 529:
            outcome = Outcome.OVERLOADED
        elif status == 408:
            outcome = Outcome.TIMEOUT
        elif status >= 500:
            outcome = Outcome.API_ERROR
        else:
            outcome = Outcome.CLIENT_ERROR
        record.status = status
        record.request_id = err.response.headers.get("request-id") or record.request_id
        StreamingClient._fail(record, outcome, error_type, error.get("message") or str(err))

    @staticmethod
    def _fail(record: ResultRecord, outcome: Outcome, error_type: str, message: str) -> None:
        record.outcome = outcome
        record.error_type = error_type
        record.error_message = message[:500]
        if not record.t_end:
            record.t_end = _now()

    @staticmethod
    def _finish(record: ResultRecord, spec: RequestSpec) -> None:
        if record.bad_usage is not None and record.outcome is Outcome.OK:
            StreamingClient._fail(record, Outcome.CLIENT_ERROR, BAD_USAGE, record.bad_usage)
        served = record.served_speed or spec.speed
        record.cost_usd = cost_usd(
            record.model,
            served,
            record.input_tokens,
            record.output_tokens,
            record.cache_read_input_tokens,
            record.cache_creation_input_tokens,
            spec.cache_ttl,
            record.cache_creation_1h_input_tokens,
            record.cache_creation_5m_input_tokens,
        )
        if record.attempts and record.t_first_token:
            serving = record.attempts[-1]
            serving.ttft_ms = (record.t_first_token - serving.t_send) / 1e6


def _warn_if_proxied(base_url: str) -> None:
    url = urllib.parse.urlsplit(base_url)
    host = url.hostname or ""
    proxies = urllib.request.getproxies()
    if (
        host
        and not urllib.request.proxy_bypass(host)
        and (proxies.get(url.scheme) or proxies.get("all"))
    ):
        logger.warning(
            "a proxy is configured in the environment, but the lean HTTP stack connects "
            "directly; use --http-stack httpx to go through the proxy"
        )


USAGE_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
MAX_USAGE_TOKENS = 10**9  # far past any context window: a larger count is not a count
SPEEDS = ("standard", "fast")


def _take_usage(record: ResultRecord, usage: Any) -> None:
    """Take the server's token counts and speed; a value that is not one (a string, a
    fraction, a huge or negative number, an unknown speed) is noted, not taken: the request
    then ends as a ``client_error`` (``bad_usage``) naming the raw value."""
    if not isinstance(usage, dict):
        record.bad_usage = f"usage is {usage!r}, not an object"
        return
    for name in USAGE_COUNTS:
        value = usage.get(name)
        if value is None:
            continue
        if type(value) is not int or not 0 <= value <= MAX_USAGE_TOKENS:
            record.bad_usage = f"usage.{name} is {value!r}, not a whole number of tokens"
            continue
        setattr(record, name, value)
    split = usage.get("cache_creation")
    if split is not None:
        _take_cache_creation(record, split)
    speed = usage.get("speed")
    if speed:
        if speed in SPEEDS:
            record.served_speed = speed
        else:
            record.bad_usage = f"usage.speed is {speed!r}, not one of {', '.join(SPEEDS)}"


def _take_cache_creation(record: ResultRecord, split: Any) -> None:
    """``usage.cache_creation``: the cache writes by TTL, each priced at its own rate."""
    if type(split) is not dict:
        record.bad_usage = f"usage.cache_creation is {split!r}, not an object"
        return
    five = split.get("ephemeral_5m_input_tokens", 0)
    hour = split.get("ephemeral_1h_input_tokens", 0)
    if (
        type(five) is int
        and type(hour) is int
        and 0 <= five <= MAX_USAGE_TOKENS
        and 0 <= hour <= MAX_USAGE_TOKENS
    ):
        record.cache_creation_5m_input_tokens = five
        record.cache_creation_1h_input_tokens = hour
    else:
        record.bad_usage = (
            f"usage.cache_creation is {split!r}: ephemeral_5m_input_tokens and "
            "ephemeral_1h_input_tokens must be whole numbers of tokens"
        )
