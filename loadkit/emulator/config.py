"""The emulator's configuration: one YAML file, every field with a documented default.

``docs/emulator-config.yaml`` is the same defaults written out with comments, each bounded
field with its bounds in brackets; a test keeps the two equal. Every number is finite and
bounded (so that no value can overflow, stall the event loop or exhaust memory), every string
and list has a maximum length. Invalid files, and invalid ``POST /_emulator/config`` patches,
are rejected with the offending field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from loadkit.distributions import Distribution, LogNormal, Uniform
from loadkit.yamlfiles import describe_validation_error, read_yaml

FAST_MODE_BETA = "fast-mode-2026-02-01"
# A standard-speed request with more input tokens than this draws on its class's long-context
# rate-limit pool (rate limits page, "Long context rate limits": "requests exceeding 200K").
LONG_CONTEXT_TOKENS = 200_000

# Bounds shared by several fields.
MAX_COUNT = 10_000_000  # streams, queue places, cache entries, tokens
MAX_PER_MINUTE = 1e12  # rate limits
MAX_MS = 600_000.0  # ten minutes
MAX_NAMES = 1000  # models, rate-limit classes
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
ModelList = Annotated[list[Name], Field(max_length=MAX_NAMES)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelProfile(_Strict):
    """Latency, capacity and caching behaviour of one model."""

    display_name: str = Field(max_length=200)
    snapshot_id: str | None = Field(
        default=None,
        max_length=200,
        description="the model's dated API ID, accepted as well as its alias and listed as its id",
    )
    created_at: str = Field(max_length=64, description="RFC 3339 time shown by GET /v1/models")
    rate_limit_class: str = Field(max_length=200, description="key into rate_limits")
    ttft_base_ms: float = Field(
        ge=0, le=MAX_MS, description="TTFT of an empty prompt on an idle server"
    )
    prefill_tokens_per_s: float = Field(
        ge=1, le=1e12, description="uncached input tokens per second"
    )
    decode_tokens_per_s: float = Field(
        ge=0.01, le=1e7, description="standard-speed output tokens/s"
    )
    ttft_jitter: float = Field(
        default=0.15, ge=0, le=2, description="sigma of a mean-1 log-normal factor on TTFT"
    )
    decode_jitter: float = Field(
        default=0.10, ge=0, le=2, description="sigma of a mean-1 log-normal factor on decode"
    )
    fast_supported: bool = False
    adaptive_thinking: bool = Field(
        default=False, description="accepts thinking {type: adaptive} (else 400)"
    )
    # Fast mode's decode speed-up over standard, drawn per request: normal with mean
    # fast_decode_multiplier and standard deviation fast_decode_spread, clipped to
    # [fast_decode_min, fast_decode_max]. The fast mode page promises "up to 2.5x" output
    # tokens per second; a mean below that is loadkit's assumption.
    fast_decode_multiplier: float = Field(
        default=2.0, ge=0.01, le=100, description="mean fast speed-up"
    )
    fast_decode_spread: float = Field(
        default=0.25, ge=0, le=100, description="standard deviation; 0: always the mean"
    )
    fast_decode_min: float = Field(default=1.0, ge=0.01, le=100)
    fast_decode_max: float = Field(default=2.5, ge=0.01, le=100)
    min_cacheable_tokens: int = Field(default=1024, ge=1, le=MAX_COUNT)
    max_output_tokens: int = Field(
        default=64_000, ge=1, le=MAX_COUNT, description="largest max_tokens accepted"
    )
    context_window: int = Field(
        default=200_000,
        ge=1,
        le=MAX_COUNT,
        description="input tokens beyond this get 400; input plus output stops at it",
    )
    long_context_beta_window: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="the window with the context-1m-2025-08-07 beta header (null: no beta)",
    )
    max_concurrent_streams: int = Field(
        default=1000, ge=1, le=MAX_COUNT, description="requests served at once"
    )
    max_queue: int = Field(
        default=2000, ge=0, le=MAX_COUNT, description="waiting beyond it gets 529"
    )

    @model_validator(mode="after")
    def _speedup_in_range(self) -> ModelProfile:
        low, mean, high = self.fast_decode_min, self.fast_decode_multiplier, self.fast_decode_max
        if not low <= mean <= high:
            raise ValueError(
                f"fast_decode_multiplier ({mean:g}) must lie within fast_decode_min ({low:g}) "
                f"and fast_decode_max ({high:g})"
            )
        return self


class RateLimit(_Strict):
    """Continuously replenished buckets; each value is per minute, null means unlimited."""

    requests_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)
    input_tokens_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)
    output_tokens_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)
    long_context_input_tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        le=MAX_PER_MINUTE,
        description="the pool of standard requests over 200K input tokens",
    )
    long_context_output_tokens_per_minute: float | None = Field(
        default=None, gt=0, le=MAX_PER_MINUTE
    )


class AccelerationLimit(_Strict):
    """429s for a sharp increase in the organisation's usage, below every per-minute limit.

    The documented behaviour has no numbers; loadkit's model: every request passes through an
    allowance that refills at ``growth`` times the organisation's recent request rate (an
    exponential average over ``window_s``), at least ``initial_requests_per_minute``, and
    holds ``burst_s`` seconds of it. A steady ramp raises the allowance with it.
    """

    enabled: bool = True
    initial_requests_per_minute: float = Field(
        default=30_000, gt=0, le=MAX_PER_MINUTE, description="the allowance with no recent usage"
    )
    growth: float = Field(
        default=3.0, ge=1, le=1000, description="the allowance over the recent request rate"
    )
    window_s: float = Field(
        default=2.0, ge=0.01, le=86400, description="averaging time of the recent request rate"
    )
    burst_s: float = Field(
        default=1.0, ge=0.01, le=3600, description="the allowance's depth, in seconds of it"
    )


class FastModeLimit(_Strict):
    """Fast mode's own limit, one for the whole context range (per minute, null = unlimited)."""

    input_tokens_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)
    output_tokens_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)


class Faults(_Strict):
    """Each rate is the probability that a request gets that fault."""

    api_error_rate: float = Field(default=0.0, ge=0, le=1, description="500 api_error")
    overloaded_rate: float = Field(default=0.0, ge=0, le=1, description="529 overloaded_error")
    midstream_error_rate: float = Field(default=0.0, ge=0, le=1, description="event: error")
    connection_cut_rate: float = Field(
        default=0.0, ge=0, le=1, description="connection closed mid-body"
    )
    slow_first_byte_rate: float = Field(default=0.0, ge=0, le=1)
    slow_first_byte_ms: float = Field(default=2000.0, ge=0, le=MAX_MS)

    @model_validator(mode="after")
    def _not_over_one(self) -> Faults:
        total = (
            self.api_error_rate
            + self.overloaded_rate
            + self.midstream_error_rate
            + self.connection_cut_rate
        )
        if total > 1:
            raise ValueError(f"error fault rates sum to {total:g}, more than 1")
        return self


class Cache(_Strict):
    default_ttl_s: float = Field(default=300.0, gt=0, le=86400, description='TTL of "ephemeral"')
    long_ttl_s: float = Field(default=3600.0, gt=0, le=86400, description='TTL of "ttl": "1h"')
    max_entries: int = Field(default=100_000, ge=1, le=MAX_COUNT)


class HttpLimits(_Strict):
    """The HTTP front: sizes and times a client may take (see loadkit/emulator/http.py)."""

    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="request line + headers"
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="the API's 32 MB"
    )
    max_json_depth: int = Field(default=64, ge=2, le=500, description="nesting of JSON bodies")
    header_timeout_s: float = Field(
        default=10.0, ge=0.01, le=3600, description="to send a request's line and headers"
    )
    idle_timeout_s: float = Field(
        default=60.0,
        ge=0.01,
        le=86400,
        description="an idle keep-alive connection is closed; also a stalled body's limit",
    )


class ThinkingAndTools(_Strict):
    """What the emulator answers a request with extended thinking or tools (docs/
    emulator-config.yaml, ``thinking_and_tools``). Every draw is from the seeded rng."""

    thinking_budget_percent: Distribution = Field(
        default_factory=lambda: LogNormal(median=30, sigma=0.6, min=2, max=100),
        description="thinking tokens of an answer, in percent of budget_tokens (capped at 100)",
    )
    tool_call_probability: float = Field(
        default=0.8, ge=0, le=1, description="tool_choice auto: a tool is called"
    )
    tool_call_after_result_probability: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="tool_choice auto, the last user turn carrying tool_result blocks",
    )
    text_before_tool_tokens: Distribution = Field(
        default_factory=lambda: Uniform(min=0, max=24),
        description="text tokens before an unforced tool_use block (0: none)",
    )


def _default_models() -> dict[str, ModelProfile]:
    return {
        "claude-opus-4-6": ModelProfile(
            display_name="Claude Opus 4.6",
            created_at="2026-02-05T00:00:00Z",
            rate_limit_class="opus",
            ttft_base_ms=900,
            prefill_tokens_per_s=25_000,
            decode_tokens_per_s=55,
            fast_supported=True,
            adaptive_thinking=True,
            min_cacheable_tokens=4096,
            max_output_tokens=128_000,
            context_window=1_000_000,
        ),
        "claude-sonnet-4-6": ModelProfile(
            display_name="Claude Sonnet 4.6",
            created_at="2026-02-17T00:00:00Z",
            rate_limit_class="sonnet",
            ttft_base_ms=600,
            prefill_tokens_per_s=40_000,
            decode_tokens_per_s=75,
            adaptive_thinking=True,
            min_cacheable_tokens=1024,
            max_output_tokens=128_000,
            context_window=1_000_000,
        ),
        "claude-sonnet-4-5": ModelProfile(
            display_name="Claude Sonnet 4.5",
            snapshot_id="claude-sonnet-4-5-20250929",
            created_at="2025-09-29T00:00:00Z",
            rate_limit_class="sonnet",
            ttft_base_ms=600,
            prefill_tokens_per_s=40_000,
            decode_tokens_per_s=70,
            min_cacheable_tokens=1024,
            long_context_beta_window=1_000_000,
        ),
        "claude-haiku-4-5": ModelProfile(
            display_name="Claude Haiku 4.5",
            snapshot_id="claude-haiku-4-5-20251001",
            created_at="2025-10-15T00:00:00Z",
            rate_limit_class="haiku",
            ttft_base_ms=350,
            prefill_tokens_per_s=80_000,
            decode_tokens_per_s=150,
            min_cacheable_tokens=4096,
        ),
    }


def _default_rate_limits() -> dict[str, RateLimit]:
    return {
        "opus": RateLimit(
            requests_per_minute=4000,
            input_tokens_per_minute=2_000_000,
            output_tokens_per_minute=400_000,
            long_context_input_tokens_per_minute=1_000_000,
            long_context_output_tokens_per_minute=200_000,
        ),
        "sonnet": RateLimit(
            requests_per_minute=4000,
            input_tokens_per_minute=2_000_000,
            output_tokens_per_minute=400_000,
            long_context_input_tokens_per_minute=1_000_000,
            long_context_output_tokens_per_minute=200_000,
        ),
        "haiku": RateLimit(
            requests_per_minute=4000,
            input_tokens_per_minute=4_000_000,
            output_tokens_per_minute=800_000,
        ),
    }


class EmulatorConfig(_Strict):
    models: dict[Name, ModelProfile] = Field(default_factory=_default_models, max_length=MAX_NAMES)
    rate_limits: dict[Name, RateLimit] = Field(
        default_factory=_default_rate_limits, max_length=MAX_NAMES
    )
    fast_mode: FastModeLimit = Field(
        default_factory=lambda: FastModeLimit(
            input_tokens_per_minute=500_000, output_tokens_per_minute=100_000
        )
    )
    output_tokens: Distribution = Field(
        default_factory=lambda: LogNormal(median=250, sigma=0.7, min=1, max=4096),
        description="how many tokens a reply would have before max_tokens caps it",
    )
    tokens_per_delta: int = Field(
        default=3, ge=1, le=1000, description="tokens in each delta after the first"
    )
    thinking_and_tools: ThinkingAndTools = Field(default_factory=ThinkingAndTools)
    acceleration_limit: AccelerationLimit = Field(default_factory=AccelerationLimit)
    fractional_retry_after: bool = Field(
        default=False,
        description="send retry-after with decimals; the API sends whole seconds (for tests)",
    )
    faults: Faults = Field(default_factory=Faults)
    cache: Cache = Field(default_factory=Cache)
    api_keys: list[Annotated[str, StringConstraints(max_length=1000)]] | None = Field(
        default=None, max_length=10_000, description="accepted keys; null accepts any non-empty"
    )
    served_log_size: int = Field(
        default=100_000,
        ge=0,
        le=1_000_000,
        description="per-request ground truth kept for /_emulator/served",
    )
    http: HttpLimits = Field(default_factory=HttpLimits)
    organization_id: str = Field(
        default="4f1d2c3b-0a9e-4e7d-8c6b-5a4f3e2d1c0b",
        min_length=1,
        max_length=200,
        description="sent as the anthropic-organization-id header of every API response",
    )
    api_key_models: dict[KeyName, ModelList] | None = Field(
        default=None,
        max_length=10_000,
        description="models each listed key may use (others get 403); unlisted keys: all",
    )
    output_token_accounting: Literal["reserve_max_tokens", "generated_only"] = Field(
        default="reserve_max_tokens",
        description="what an output-token bucket is charged: max_tokens at admission, the "
        "unused part given back at the end; or only the tokens generated, at the end",
    )

    @model_validator(mode="after")
    def _classes_exist(self) -> EmulatorConfig:
        snapshots = [p.snapshot_id for p in self.models.values() if p.snapshot_id]
        clash = {s for s in snapshots if s in self.models or snapshots.count(s) > 1}
        if clash:
            raise ValueError(f"models: snapshot_id {sorted(clash)[0]!r} names two models")
        for allowed in (self.api_key_models or {}).values():
            unknown = sorted(set(allowed) - set(self.models))
            if unknown:
                raise ValueError(
                    f"api_key_models: a key's list names {unknown[0]!r}, not a key of models "
                    "(list models by their alias)"
                )
        for name, profile in self.models.items():
            if profile.rate_limit_class not in self.rate_limits:
                raise ValueError(
                    f"models.{name}.rate_limit_class: {profile.rate_limit_class!r} "
                    f"is not a key of rate_limits ({', '.join(sorted(self.rate_limits))})"
                )
        return self


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the field."""


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        current = merged.get(key)
        # A distribution whose kind changes is replaced, not merged field by field.
        same_kind = (
            isinstance(current, dict)
            and value.get("kind", current.get("kind")) == current.get("kind")
            if isinstance(value, dict)
            else False
        )
        if same_kind and isinstance(current, dict):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def config_from_mapping(
    data: Any, source: str, base: EmulatorConfig | None = None
) -> EmulatorConfig:
    """Build a config from parsed YAML/JSON, merged over ``base`` (the defaults if None)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid emulator config {source}: expected a mapping at the top level")
    start = (base or EmulatorConfig()).model_dump(by_alias=True)
    try:
        return EmulatorConfig.model_validate(_deep_merge(start, data))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, "emulator config", source)) from None


def load_config(path: str | Path | None) -> EmulatorConfig:
    if path is None:
        return EmulatorConfig()
    return config_from_mapping(read_yaml(path, "emulator config", ConfigError), str(path))


def _number(value: float) -> str:
    """1e12, 33554432, 0.01: as short as the docs write them."""
    if float(value).is_integer():
        whole = int(value)
        mantissa, exponent = whole, 0
        while mantissa and mantissa % 10 == 0:
            mantissa //= 10
            exponent += 1
        return f"{mantissa}e{exponent}" if abs(whole) >= 10**6 and mantissa < 10 else str(whole)
    return repr(float(value))


def describe_bounds(field: FieldInfo) -> str | None:
    """A field's bounds as docs/emulator-config.yaml writes them: ``[0, 1]``, ``(0, 1e12]``,
    ``[at most 200 characters]``, ``[at most 1000 entries]``; None if it has none."""
    low = high = None
    low_open = high_open = False
    length = None
    for item in field.metadata:  # annotated_types.Ge, Gt, Le, Lt, MaxLen
        if getattr(item, "ge", None) is not None:
            low = item.ge
        elif getattr(item, "gt", None) is not None:
            low, low_open = item.gt, True
        elif getattr(item, "le", None) is not None:
            high = item.le
        elif getattr(item, "lt", None) is not None:
            high, high_open = item.lt, True
        elif getattr(item, "max_length", None) is not None:
            length = item.max_length
    if low is not None or high is not None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        low_text = _number(low) if low is not None else "-inf"
        high_text = _number(high) if high is not None else "inf"
        return f"{left}{low_text}, {high_text}{right}"
    if length is not None:
        unit = "characters" if field.annotation in (str, str | None) else "entries"
        return f"[at most {length} {unit}]"
    return None
