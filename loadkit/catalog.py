"""What loadkit knows of the real API's models: prices, fast-mode support, cache minimums."""

from __future__ import annotations

from dataclasses import dataclass

FAST_MODE_BETA = "fast-mode-2026-02-01"
# extended thinking page, "Interleaved thinking" (as of 2026-11): thinking between tool calls
INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"
FAST_PRICE_MULTIPLIER = 6.0
LONG_CONTEXT_THRESHOLD = 200_000  # input tokens above which long-context prices apply
LONG_CONTEXT_INPUT_MULTIPLIER = 2.0
LONG_CONTEXT_OUTPUT_MULTIPLIER = 1.5
CACHE_WRITE_MULTIPLIER = {"5m": 1.25, "1h": 2.0}
CACHE_READ_MULTIPLIER = 0.1


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    fast_supported: bool = False
    min_cacheable_tokens: int = 1024


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("claude-opus-4-6", 5.0, 25.0, fast_supported=True, min_cacheable_tokens=4096),
        ModelInfo("claude-sonnet-4-6", 3.0, 15.0, min_cacheable_tokens=1024),
        ModelInfo("claude-sonnet-4-5", 3.0, 15.0, min_cacheable_tokens=1024),
        ModelInfo("claude-haiku-4-5", 1.0, 5.0, min_cacheable_tokens=4096),
    )
}

#: Dated snapshot IDs the API accepts as well as their aliases (the models overview's "Claude
#: API ID" beside its "Claude API alias"); both name the same model and price.
SNAPSHOTS: dict[str, str] = {
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-haiku-4-5-20251001": "claude-haiku-4-5",
}


def canonical_model(model: str) -> str:
    """The alias of a dated model ID (any other ID as it is)."""
    return SNAPSHOTS.get(model, model)


def model_info(model: str) -> ModelInfo | None:
    """What is known of ``model``, by alias or dated ID (None: an unknown model)."""
    return MODELS.get(SNAPSHOTS.get(model, model))


def cost_usd(
    model: str,
    speed: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_creation_tokens: int = 0,
    cache_ttl: str = "5m",
    cache_creation_1h_tokens: int = 0,
    cache_creation_5m_tokens: int = 0,
) -> float:
    """Estimated price of one request, from the published per-MTok prices.

    Fast mode is 6x; prompts over 200K input tokens pay long-context prices (input 2x,
    output 1.5x), so fast above 200K is $60/$225 on Opus 4.6; cache writes cost 1.25x
    (1h: 2x) of input and reads 0.1x (pricing page, "Prompt caching" multipliers, as of
    2026-11). When the server split the writes by TTL (``usage.cache_creation``: the 5m and
    1h parts add up to ``cache_creation_tokens``), each part is priced at its own rate;
    otherwise all writes are priced at ``cache_ttl``'s. Unknown models cost 0.
    """
    info = model_info(model)
    if info is None:
        return 0.0
    input_price = info.input_usd_per_mtok
    output_price = info.output_usd_per_mtok
    if input_tokens + cache_read_tokens + cache_creation_tokens > LONG_CONTEXT_THRESHOLD:
        input_price *= LONG_CONTEXT_INPUT_MULTIPLIER
        output_price *= LONG_CONTEXT_OUTPUT_MULTIPLIER
    if speed == "fast":
        input_price *= FAST_PRICE_MULTIPLIER
        output_price *= FAST_PRICE_MULTIPLIER
    if cache_creation_tokens and cache_creation_5m_tokens + cache_creation_1h_tokens == (
        cache_creation_tokens
    ):
        writes = (
            cache_creation_5m_tokens * CACHE_WRITE_MULTIPLIER["5m"]
            + cache_creation_1h_tokens * CACHE_WRITE_MULTIPLIER["1h"]
        )
    else:
        writes = cache_creation_tokens * CACHE_WRITE_MULTIPLIER[cache_ttl]
    billed_input = input_tokens + writes + cache_read_tokens * CACHE_READ_MULTIPLIER
    return (billed_input * input_price + output_tokens * output_price) / 1_000_000
