"""The result of one request: times, usage, outcome and every attempt it took."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    API_ERROR = "api_error"
    STREAM_ERROR = "stream_error"
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CLIENT_ERROR = "client_error"


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt (the SDK's retries and a fallback each make one)."""

    speed: str
    t_send: int  # perf_counter_ns just before the request's body is written (until then:
    # when it was handed to the transport)
    t_headers: int = 0
    status: int = 0
    error_type: str | None = None
    retry_after_s: float | None = None
    rate_limit_cause: str | None = None  # a 429's limit (loadkit.ratelimit_cause.CAUSES)
    waited_s: float = 0.0  # time between the previous attempt's answer and this send
    ttft_ms: float | None = None
    sent: bool = False  # the whole request was written (a server may have seen it)


@dataclass(slots=True)
class ResultRecord:
    model: str
    speed: str  # requested speed of the first attempt
    scenario: str
    prompt_tokens_target: int
    max_tokens: int
    dataset: str = ""  # the prompt dataset's name ("" for synthetic prompts)
    output_target: int = 0  # output tokens asked for in the prompt (0: none asked)
    session_id: str = ""  # the conversation (or trace session) it belongs to
    turn: int = 0  # its turn in that conversation, from 1 (0: not part of one)
    # Times, perf_counter_ns of this process; 0 when the point was never reached.
    t_intended: int = 0
    t_send: int = 0
    t_headers: int = 0
    t_message_start: int = 0
    t_first_token: int = 0
    t_last_token: int = 0
    t_end: int = 0
    deltas: int = 0
    itl_ns: list[int] = field(default_factory=list)
    # What the server said.
    request_id: str | None = None
    status: int = 0
    outcome: Outcome = Outcome.OK
    error_type: str | None = None
    error_message: str | None = None
    stop_reason: str | None = None
    served_speed: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    # usage.cache_creation's split of the writes by TTL (both 0 when the server gave none)
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    rate_limits: dict[str, str] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    fell_back: bool = False
    cache_tokens_lost: int = 0  # cache reads the original speed would have had (fallbacks)
    cost_usd: float = 0.0
    bad_usage: str | None = None  # why the server's usage could not be taken
    # Content mode (RequestSpec.answer set: conversations, tools, thinking): the answer's
    # blocks were rebuilt, and its output tokens shared out by the characters of each kind.
    parsed_content: bool = False
    t_first_text: int = 0  # the first text_delta (t_first_token: the first delta of any kind)
    thinking_tokens: int = 0
    text_tokens: int = 0
    tool_use_tokens: int = 0  # of the tool_use blocks' input JSON
    tool_calls: int = 0  # complete tool_use blocks in the answer
    # a tool_result turn: when the answer that asked for the tool ended (its t_end)
    t_tool_call_end: int = 0

    def restart(self) -> None:
        """Forget the previous call's answer before the next call of the same request."""
        self.t_headers = self.t_message_start = self.t_first_token = self.t_last_token = 0
        self.t_end = self.deltas = self.status = 0
        self.itl_ns = []
        self.request_id = self.error_type = self.error_message = None
        self.stop_reason = self.served_speed = None
        self.outcome = Outcome.OK
        self.input_tokens = self.output_tokens = 0
        self.cache_read_input_tokens = self.cache_creation_input_tokens = 0
        self.cache_creation_5m_input_tokens = self.cache_creation_1h_input_tokens = 0
        self.bad_usage = None
        self.t_first_text = self.thinking_tokens = self.text_tokens = 0
        self.tool_use_tokens = self.tool_calls = 0

    @property
    def fallback_delay_ms(self) -> float | None:
        """How much later than the first send the first attempt at another speed went out."""
        if not self.fell_back:
            return None
        for attempt in self.attempts:
            if attempt.speed != self.speed:
                return (attempt.t_send - self.t_send) / 1e6
        return None

    @property
    def served_as_asked(self) -> bool:
        """Served at the speed asked for: the server's ``usage.speed`` decides; without it,
        the speed of the last attempt (a request that fell back was last sent at another)."""
        served = self.served_speed or (self.attempts[-1].speed if self.attempts else self.speed)
        return served == self.speed

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def ttft_ms(self) -> float | None:
        if not self.t_first_token or not self.t_send:
            return None
        return (self.t_first_token - self.t_send) / 1e6

    @property
    def ttft_text_ms(self) -> float | None:
        """Time to the first text token (thinking and tool JSON before it are waited for)."""
        if not self.t_first_text or not self.t_send:
            return None
        return (self.t_first_text - self.t_send) / 1e6

    @property
    def tool_round_trip_ms(self) -> float | None:
        """A tool_result turn: from the end of the answer that asked for the tool to this
        answer's first token (the tool's latency and this request's TTFT included)."""
        if not self.t_tool_call_end or not self.t_first_token:
            return None
        return (self.t_first_token - self.t_tool_call_end) / 1e6

    @property
    def e2e_ms(self) -> float | None:
        if not self.t_end or not self.t_send:
            return None
        return (self.t_end - self.t_send) / 1e6

    @property
    def queue_delay_ms(self) -> float:
        if not self.t_intended or not self.t_send:
            return 0.0
        return max(0.0, (self.t_send - self.t_intended) / 1e6)

    @property
    def schedule_ttft_ms(self) -> float | None:
        """TTFT counted from the intended start (open-loop), lateness included."""
        if not self.t_first_token:
            return None
        # (a start a hair before its schedule, on gevent's cached clock, is not subtracted)
        start = min(self.t_intended, self.t_send) if self.t_intended else self.t_send
        return (self.t_first_token - start) / 1e6

    @property
    def otps(self) -> float | None:
        """Decode speed: (output_tokens - 1) / (t_last_token - t_first_token)."""
        span = self.t_last_token - self.t_first_token
        if self.output_tokens < 2 or span <= 0 or not self.t_first_token:
            return None
        return (self.output_tokens - 1) / (span / 1e9)

    @property
    def responses_429(self) -> int:
        """Attempts answered 429, retried or not."""
        return sum(1 for a in self.attempts if a.status == 429)

    @property
    def retry_wait_s(self) -> float:
        return sum(a.waited_s for a in self.attempts)
