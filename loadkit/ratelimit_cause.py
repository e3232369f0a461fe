"""Which limit a 429 answered for, read from that answer's own rate-limit headers.

The rate limits page (platform.claude.com/docs/en/api/rate-limits, as of 2026-11) documents a
429 for each per-minute limit (requests, input tokens, output tokens; fast mode's input and
output tokens, "anthropic-fast-*" headers) and one for "acceleration limits ... if your
organization has a sharp increase in usage", which has no header of its own. So a limit is
the cause when its ``-remaining`` is below what the request needed (1 request; its prompt's
tokens, or 1 when not known; ``max_tokens`` output tokens, as they are reserved at admission),
at most the limit itself; a fast attempt is checked against fast mode's limit only (it draws
on no other). A 429 with no exhausted limit is the acceleration limit's.

Read once per 429, never per event.
"""

from __future__ import annotations

from collections.abc import Mapping

ACCELERATION = "acceleration"
# (header family, cause), checked in this order
_FAST = (
    ("anthropic-fast-input-tokens", "fast_input_tokens"),
    ("anthropic-fast-output-tokens", "fast_output_tokens"),
)
_STANDARD = (
    ("anthropic-ratelimit-requests", "requests"),
    ("anthropic-ratelimit-input-tokens", "input_tokens"),
    ("anthropic-ratelimit-output-tokens", "output_tokens"),
)
CAUSES = (*(cause for _, cause in _FAST + _STANDARD), ACCELERATION)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def cause_of_429(headers: Mapping[str, str], speed: str, input_tokens: int, max_tokens: int) -> str:
    """The limit that refused an attempt at ``speed`` needing ``input_tokens`` and
    ``max_tokens``: one of ``CAUSES``."""
    families = _FAST if speed == "fast" else _STANDARD
    tokens = (max(1, input_tokens), max(1, max_tokens))  # 0: not known, any shortfall counts
    needs = tokens if speed == "fast" else (1, *tokens)
    for (family, cause), need in zip(families, needs, strict=True):
        remaining = _number(headers.get(f"{family}-remaining"))
        if remaining is None:
            continue
        limit = _number(headers.get(f"{family}-limit"))
        if remaining < (min(need, limit) if limit is not None else need):
            return cause
    return ACCELERATION
