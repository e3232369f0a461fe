"""The emulator's configuration: one YAML file, every field with a documented default.

``docs/emulator-config.yaml`` is the same defaults written out with comments; a test keeps the
two equal. Invalid files are rejected at start with the offending field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadkit.distributions import Distribution, LogNormal
from loadkit.yamlfiles import describe_validation_error, read_yaml

FAST_MODE_BETA = "fast-mode-2026-02-01"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelProfile(_Strict):
    """Latency, capacity and caching behaviour of one model."""

    display_name: str
    created_at: str = Field(description="RFC 3339 time shown by GET /v1/models")
    rate_limit_class: str = Field(description="key into rate_limits")
    ttft_base_ms: float = Field(ge=0, description="TTFT of an empty prompt on an idle server")
    prefill_tokens_per_s: float = Field(gt=0, description="uncached input tokens per second")
    decode_tokens_per_s: float = Field(gt=0, description="standard-speed output tokens/s")
    ttft_jitter: float = Field(
        default=0.15, ge=0, le=2, description="sigma of a mean-1 log-normal factor on TTFT"
    )
    decode_jitter: float = Field(
        default=0.10, ge=0, le=2, description="sigma of a mean-1 log-normal factor on decode"
    )
    fast_supported: bool = False
    fast_decode_multiplier: float = Field(default=2.5, gt=0)
    min_cacheable_tokens: int = Field(default=1024, ge=1)
    max_concurrent_streams: int = Field(default=1000, ge=1, description="requests served at once")
    max_queue: int = Field(default=2000, ge=0, description="waiting beyond it gets 529")


class RateLimit(_Strict):
    """Continuously replenished buckets; each value is per minute, null means unlimited."""

    requests_per_minute: float | None = Field(default=None, gt=0)
    input_tokens_per_minute: float | None = Field(default=None, gt=0)
    output_tokens_per_minute: float | None = Field(default=None, gt=0)


class FastModeLimit(_Strict):
    """Fast mode's own limit, one for the whole context range (per minute, null = unlimited)."""

    input_tokens_per_minute: float | None = Field(default=None, gt=0)
    output_tokens_per_minute: float | None = Field(default=None, gt=0)


class Faults(_Strict):
    """Each rate is the probability that a request gets that fault."""

    api_error_rate: float = Field(default=0.0, ge=0, le=1, description="500 api_error")
    overloaded_rate: float = Field(default=0.0, ge=0, le=1, description="529 overloaded_error")
    midstream_error_rate: float = Field(default=0.0, ge=0, le=1, description="event: error")
    connection_cut_rate: float = Field(
        default=0.0, ge=0, le=1, description="connection closed mid-body"
    )
    slow_first_byte_rate: float = Field(default=0.0, ge=0, le=1)
    slow_first_byte_ms: float = Field(default=2000.0, ge=0)

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
    default_ttl_s: float = Field(default=300.0, gt=0, description='TTL of "ephemeral"')
    long_ttl_s: float = Field(default=3600.0, gt=0, description='TTL of "ttl": "1h"')
    max_entries: int = Field(default=100_000, ge=1)


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
            min_cacheable_tokens=4096,
        ),
        "claude-sonnet-4-6": ModelProfile(
            display_name="Claude Sonnet 4.6",
            created_at="2026-02-17T00:00:00Z",
            rate_limit_class="sonnet",
            ttft_base_ms=600,
            prefill_tokens_per_s=40_000,
            decode_tokens_per_s=75,
            min_cacheable_tokens=1024,
        ),
        "claude-sonnet-4-5": ModelProfile(
            display_name="Claude Sonnet 4.5",
            created_at="2025-09-29T00:00:00Z",
            rate_limit_class="sonnet",
            ttft_base_ms=600,
            prefill_tokens_per_s=40_000,
            decode_tokens_per_s=70,
            min_cacheable_tokens=1024,
        ),
        "claude-haiku-4-5": ModelProfile(
            display_name="Claude Haiku 4.5",
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
        ),
        "sonnet": RateLimit(
            requests_per_minute=4000,
            input_tokens_per_minute=2_000_000,
            output_tokens_per_minute=400_000,
        ),
        "haiku": RateLimit(
            requests_per_minute=4000,
            input_tokens_per_minute=4_000_000,
            output_tokens_per_minute=800_000,
        ),
    }


class EmulatorConfig(_Strict):
    models: dict[str, ModelProfile] = Field(default_factory=_default_models)
    rate_limits: dict[str, RateLimit] = Field(default_factory=_default_rate_limits)
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
        default=3, ge=1, description="tokens in each delta after the first"
    )
    fractional_retry_after: bool = Field(
        default=False, description="send retry-after with decimals instead of whole seconds"
    )
    faults: Faults = Field(default_factory=Faults)
    cache: Cache = Field(default_factory=Cache)
    api_keys: list[str] | None = Field(
        default=None, description="accepted keys; null accepts any non-empty key"
    )
    served_log_size: int = Field(
        default=100_000, ge=0, description="per-request ground truth kept for /_emulator/served"
    )

    @model_validator(mode="after")
    def _classes_exist(self) -> EmulatorConfig:
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
        if same_kind:
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
