"""The Messages API's responses as headers, bodies and stream chunks; no state of its own.

Ids, times and rate-limit headers are the caller's to give.
"""

from __future__ import annotations

import math
from typing import Any

from loadkit.emulator import answer, sse
from loadkit.emulator.errors import ApiError
from loadkit.emulator.http import Connection, chunk
from loadkit.emulator.limits import Limited
from loadkit.emulator.plan import Plan

JSON = "application/json"
Headers = list[tuple[str, str]]


def send_json(conn: Connection, status: int, body: Any, headers: Headers) -> None:
    if not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", JSON))
    conn.respond(status, headers, sse.dumps(body))


def id_headers(request_id: str, organization_id: str | None) -> Headers:
    """``request-id`` and, once the API key is known, ``anthropic-organization-id``: "every
    response" carries both (API overview, "Response headers", platform.claude.com/docs/en/api/
    overview, as of 2026-11)."""
    if organization_id is None:
        return [("request-id", request_id)]
    return [("request-id", request_id), ("anthropic-organization-id", organization_id)]


def send_error(
    conn: Connection, err: ApiError, request_id: str, organization_id: str | None = None
) -> None:
    headers = id_headers(request_id, organization_id)
    headers.append(("content-type", JSON))
    send_json(conn, err.status, sse.error_body(err.error_type, err.message, request_id), headers)


def response_headers(
    request_id: str, organization_id: str, limit_headers: Headers, plan: Plan, queue_ms: float
) -> Headers:
    """A served request's headers, with the emulator's own ``x-emulator-*`` timing plan."""
    headers = id_headers(request_id, organization_id)
    headers.extend(limit_headers)
    headers.append(("x-emulator-queue-ms", f"{queue_ms:.3f}"))
    headers.append(("x-emulator-ttft-ms", f"{queue_ms + plan.ttft_s * 1000.0:.3f}"))
    headers.append(("x-emulator-otps", f"{plan.decode_tokens_per_s:.3f}"))
    headers.append(("x-emulator-output-tokens", str(plan.output_tokens)))
    return headers


def retry_after(wait_s: float, fractional: bool) -> str:
    if fractional:
        return f"{math.ceil(wait_s * 1000) / 1000:.3f}"
    return str(max(1, math.ceil(wait_s)))


RATE_LIMIT_SCOPES = {
    "standard": "rate limit",
    "long_context": "long context rate limit",
    "fast": "fast mode rate limit",
}


def rate_limit_message(limited: Limited) -> str:
    """The 429's message, "describing which rate limit was exceeded" (rate limits page)."""
    if limited.scope == "acceleration":
        # The page's own words for it ("Rate limits"); it documents no other message.
        return (
            "Your organization has a sharp increase in usage and hit the API's acceleration "
            "limits. To avoid hitting acceleration limits, ramp up your traffic gradually "
            "and maintain consistent usage patterns."
        )
    return (
        f"This request would exceed your organization's {RATE_LIMIT_SCOPES[limited.scope]} "
        f"of {int(limited.limit):,} {limited.kind} per minute. Please retry after the "
        "time given in the retry-after header."
    )


def usage(plan: Plan, speed: str, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": plan.cache.creation_tokens,
        "cache_read_input_tokens": plan.cache.read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": plan.cache.creation_5m_tokens,
            "ephemeral_1h_input_tokens": plan.cache.creation_1h_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
        "speed": speed,
    }


def message_start_chunk(message_id: str, model: str, plan: Plan, speed: str) -> bytes:
    start = sse.event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage(plan, speed, 1),
            },
        },
    )
    if plan.blocks is not None:  # its blocks open as they come (answer.steps)
        return chunk(start + sse.PING)
    return chunk(start + sse.CONTENT_BLOCK_START + sse.PING)


def closing_chunk(plan: Plan, speed: str) -> bytes:
    delta = sse.event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
            "usage": usage(plan, speed, plan.output_tokens),
        },
    )
    if plan.blocks is not None:  # the last step closed its last block
        return chunk(delta + sse.MESSAGE_STOP)
    return chunk(sse.CONTENT_BLOCK_STOP + delta + sse.MESSAGE_STOP)


def message_body(message_id: str, model: str, plan: Plan, speed: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": (
            [{"type": "text", "text": sse.filler_text(plan.output_tokens)}]
            if plan.blocks is None
            else answer.content(plan.blocks)
        ),
        "stop_reason": plan.stop_reason,
        "stop_sequence": None,
        "usage": usage(plan, speed, plan.output_tokens),
    }
