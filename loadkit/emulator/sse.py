"""Server-sent events of the Messages stream, as bytes ready for the socket."""

from __future__ import annotations

import json
from typing import Any

from loadkit.emulator.http import chunk

# Filler text: each word is one token under the emulator's bytes/4 approximation.
WORDS = (" the", " and", " for", " you", " can", " run", " now", " big", " new", " way")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def event(name: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode("ascii"), dumps(data))


def filler_text(tokens: int, offset: int = 0) -> str:
    return "".join(WORDS[(offset + i) % len(WORDS)] for i in range(tokens))


def delta_chunk(tokens: int) -> bytes:
    return chunk(
        event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": filler_text(tokens)},
            },
        )
    )


class DeltaChunks(dict[int, bytes]):
    """Prebuilt delta chunks by token count, so a streamed event costs one write.

    A chunk is built the first time its size is used (a stream uses 1, ``tokens_per_delta``
    and at most one remainder), and a hit is a plain dict lookup.
    """

    def __init__(self, tokens_per_delta: int) -> None:
        super().__init__()
        self.tokens_per_delta = tokens_per_delta
        for tokens in {1, tokens_per_delta}:
            self[tokens] = delta_chunk(tokens)

    def __missing__(self, tokens: int) -> bytes:
        if not 1 <= tokens <= self.tokens_per_delta:
            raise KeyError(tokens)
        built = self[tokens] = delta_chunk(tokens)
        return built


CONTENT_BLOCK_START = event(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
PING = event("ping", {"type": "ping"})
CONTENT_BLOCK_STOP = event("content_block_stop", {"type": "content_block_stop", "index": 0})
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})


def error_body(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_event(error_type: str, message: str) -> bytes:
    return event("error", error_body(error_type, message, None))
