"""Streaming shape shared by the candidate servers (not the real emulator).

Every candidate emits the same Anthropic Messages SSE sequence::

    message_start, content_block_start, ping,       (at once, with the headers)
    content_block_delta * k,                         (1 token, then 3 tokens each)
    content_block_stop, message_delta, message_stop  (with the last delta)

The first delta is due ``ttft`` after the request was parsed; the delta that
completes token ``j`` (1-based) is due at ``ttft + (j - 1) / tps``.  Deadlines
are absolute (relative to the request's arrival), so lateness never accumulates.
Events due at the same instant are written in one chunk.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from typing import Any

TOKEN = " tok"
_ids = itertools.count(1)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data).encode() + b"\n\n"


def start_group(model: str, input_tokens: int) -> bytes:
    msg: dict[str, Any] = {
        "id": f"msg_bench{next(_ids):016d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return (
        event("message_start", {"type": "message_start", "message": msg})
        + event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        + event("ping", {"type": "ping"})
    )


def delta(n_tokens: int) -> bytes:
    return event(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": TOKEN * n_tokens},
        },
    )


def end_group(output_tokens: int) -> bytes:
    return (
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        + event("message_stop", {"type": "message_stop"})
    )


def schedule(n_tokens: int, ttft_s: float, tps: float) -> Iterator[tuple[float, int, bool]]:
    """Yield ``(offset_s, tokens_in_delta, is_last)`` for each delta of a stream."""
    emitted = 0
    while emitted < n_tokens:
        step = 1 if emitted == 0 else min(3, n_tokens - emitted)
        emitted += step
        yield ttft_s + (emitted - 1) / tps, step, emitted >= n_tokens


def parse_request(body: bytes) -> tuple[str, int, int]:
    """Return ``(model, max_tokens, input_tokens_estimate)`` from a Messages request body."""
    req = json.loads(body)
    n = max(1, int(req.get("max_tokens", 16)))
    chars = sum(len(str(m.get("content", ""))) for m in req.get("messages", []))
    return str(req.get("model", "unknown")), n, max(1, chars // 4)


def arg_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft-ms", type=float, default=200.0, help="fixed time to first token")
    p.add_argument("--tps", type=float, default=50.0, help="decode speed, tokens/s")
    p.add_argument("--backlog", type=int, default=4096)
    return p
