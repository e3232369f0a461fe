"""An answer of several content blocks (thinking, text, tool_use): what it holds, drawn from
the seeded rng, and its stream events.

Shapes follow, as of 2026-11, the streaming page (platform.claude.com/docs/en/build-with-claude/
streaming, "Content block delta types", "Streaming request with extended thinking", "Streaming
request with tool use"): a thinking block starts as ``{"type": "thinking", "thinking": ""}``,
grows by ``thinking_delta`` and gets one ``signature_delta`` just before its
``content_block_stop``; a tool_use block starts with its id, name and ``input: {}`` and grows
by ``input_json_delta`` pieces whose ``partial_json`` join to its input. Blocks come in the
order thinking, text, tool_use: text before a tool call is the model saying what it will do
("I'll check the current weather", tool use page, "Handling tool use and tool result content
blocks"). Forced tool use has no text before the call ("Forcing tool use").

Every block's tokens are paced at the decode rate like text: token k of the answer is due
k - 1 decode intervals after the first. Each block's first delta carries one token, later
deltas ``tokens_per_delta``. A tool input's tokens are its JSON bytes / 4, rounded up.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadkit.emulator import sse
from loadkit.emulator.config import ThinkingAndTools
from loadkit.emulator.content import Features, Tool
from loadkit.emulator.http import chunk

THINKING, TEXT, TOOL_USE = "thinking", "text", "tool_use"


@dataclass(slots=True, frozen=True)
class Block:
    kind: str  # THINKING | TEXT | TOOL_USE
    tokens: int
    data: str = ""  # thinking: its signature; tool_use: its input as JSON
    tool_id: str = ""
    name: str = ""


@dataclass(slots=True, frozen=True)
class Answer:
    blocks: tuple[Block, ...]
    tokens: int
    stop_reason: str
    text_start: int  # the 1-based index of the first text token in the answer, 0: no text


def compose(
    rng: random.Random,
    settings: ThinkingAndTools,
    features: Features,
    wanted_text: int,
    max_tokens: int,
    context_room: int | None,
) -> Answer:
    """The blocks of one answer. ``wanted_text``: the text the model would write (the
    output_tokens draw) before max_tokens or the context window stops it."""
    room = max_tokens if context_room is None else min(max_tokens, max(1, context_room))
    full = "max_tokens" if room == max_tokens else "model_context_window_exceeded"
    blocks: list[Block] = []
    used = 0
    if features.budget_tokens and (not features.after_tool_result or features.interleaved):
        percent = min(100, max(1, settings.thinking_budget_percent.sample(rng)))
        thinking = min(room, max(1, features.budget_tokens * percent // 100))
        blocks.append(Block(THINKING, thinking, _signature(rng)))
        used = thinking
        if used >= room:
            return Answer(tuple(blocks), used, full, 0)
    tool = _pick_tool(rng, settings, features)
    if tool is not None:
        forced = features.choice in ("any", "tool")
        before = 0 if forced else settings.text_before_tool_tokens.sample(rng)
        arguments = json.dumps(_value(rng, {"type": "object"}, tool.required, 0))
        tool_tokens = (len(arguments) + 3) // 4
        # A call that does not fit is not made: the answer is text up to the limit instead.
        if used + before + tool_tokens <= room:
            text_start = used + 1 if before else 0
            if before:
                blocks.append(Block(TEXT, before))
            tool_id = f"toolu_01{rng.getrandbits(88):022x}"
            blocks.append(Block(TOOL_USE, tool_tokens, arguments, tool_id, tool.name))
            return Answer(tuple(blocks), used + before + tool_tokens, "tool_use", text_start)
    text = min(wanted_text, room - used)
    stop = full if used + wanted_text >= room else "end_turn"
    blocks.append(Block(TEXT, text))
    return Answer(tuple(blocks), used + text, stop, used + 1)


def _pick_tool(rng: random.Random, settings: ThinkingAndTools, features: Features) -> Tool | None:
    tools = features.tools
    if not tools or features.choice == "none":
        return None
    if features.choice == "tool":
        return next(tool for tool in tools if tool.name == features.forced_tool)
    if features.choice == "auto":
        chance = (
            settings.tool_call_after_result_probability
            if features.after_tool_result
            else settings.tool_call_probability
        )
        if rng.random() >= chance:
            return None
    return tools[rng.randrange(len(tools))]


def _signature(rng: random.Random) -> str:
    return base64.b64encode(rng.getrandbits(512).to_bytes(64, "big")).decode("ascii")


def _value(
    rng: random.Random, schema: Any, required: tuple[tuple[str, Any], ...] | None, depth: int
) -> Any:
    """A value for ``schema``: an object gets its required properties (those of a nested
    object schema too, three levels deep), an enum its first value."""
    if not isinstance(schema, dict):
        schema = {}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = kind[0] if kind else "string"
    if kind == "object":
        if required is None:
            names = schema.get("required", [])
            props = schema.get("properties", {})
            if depth >= 3 or not isinstance(names, list) or not isinstance(props, dict):
                return {}
            required = tuple((n, props.get(n)) for n in names if isinstance(n, str))
        return {name: _value(rng, sub, None, depth + 1) for name, sub in required}
    if kind == "integer":
        return rng.randrange(100)
    if kind == "number":
        return round(rng.random() * 100, 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return []
    if kind == "null":
        return None
    return sse.filler_text(1 + rng.randrange(4), rng.randrange(10)).strip()


def tokens_by_kind(blocks: tuple[Block, ...], sent: int) -> tuple[int, int, int]:
    """(thinking, text, tool_use) tokens among the first ``sent`` of the answer."""
    counts = {THINKING: 0, TEXT: 0, TOOL_USE: 0}
    for block in blocks:
        taken = min(block.tokens, sent)
        counts[block.kind] += taken
        sent -= taken
    return counts[THINKING], counts[TEXT], counts[TOOL_USE]


# streaming ------------------------------------------------------------------------------
def _header(block: Block) -> dict[str, Any]:
    if block.kind == THINKING:
        return {"type": "thinking", "thinking": ""}
    if block.kind == TOOL_USE:
        return {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": {}}
    return {"type": "text", "text": ""}


def _delta(block: Block, offset: int, tokens: int) -> dict[str, Any]:
    if block.kind == THINKING:
        return {"type": "thinking_delta", "thinking": sse.filler_text(tokens, offset)}
    if block.kind == TOOL_USE:
        piece = block.data[offset * 4 : (offset + tokens) * 4]
        return {"type": "input_json_delta", "partial_json": piece}
    return {"type": "text_delta", "text": sse.filler_text(tokens, offset)}


class DeltaEvents(dict[tuple[int, str, int, int], bytes]):
    """Prebuilt thinking and text delta events by (block index, kind, tokens, offset into
    the filler's cycle of words), so that a delta in the middle of a block costs a lookup.
    Held by the emulator (one per process); emptied when it grows past ``MAX_ENTRIES`` (a
    large ``tokens_per_delta`` has many remainders)."""

    MAX_ENTRIES = 4096

    def __missing__(self, key: tuple[int, str, int, int]) -> bytes:
        if len(self) >= self.MAX_ENTRIES:
            self.clear()
        index, kind, tokens, phase = key
        block = Block(kind, tokens)
        built = self[key] = _delta_event(index, _delta(block, phase, tokens))
        return built


def _delta_event(index: int, delta: dict[str, Any]) -> bytes:
    return sse.event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def steps(
    blocks: tuple[Block, ...], tokens_per_delta: int, events: DeltaEvents
) -> Iterator[tuple[int, bytes]]:
    """The stream after message_start, one (tokens sent so far, chunk) per delta: each
    chunk is due when its last token is. The last chunk closes the last block (the caller
    adds message_delta and message_stop)."""
    sent = 0
    cycle = len(sse.WORDS)
    for index, block in enumerate(blocks):
        opening = sse.event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": _header(block)},
        )
        if block.kind == TOOL_USE:  # the streaming page's example opens with an empty piece
            opening += _delta_event(index, {"type": "input_json_delta", "partial_json": ""})
        taken = 0
        while taken < block.tokens:
            tokens = 1 if taken == 0 else min(tokens_per_delta, block.tokens - taken)
            if block.kind == TOOL_USE:
                data = _delta_event(index, _delta(block, taken, tokens))
            else:
                data = events[index, block.kind, tokens, taken % cycle]
            taken += tokens
            sent += tokens
            if opening:
                data, opening = opening + data, b""
            if taken == block.tokens:
                if block.kind == THINKING:
                    signature = {"type": "signature_delta", "signature": block.data}
                    data += _delta_event(index, signature)
                data += sse.event(
                    "content_block_stop", {"type": "content_block_stop", "index": index}
                )
            yield sent, chunk(data)


def content(blocks: tuple[Block, ...]) -> list[dict[str, Any]]:
    """The answer's ``content`` in a whole (unary) message."""
    out: list[dict[str, Any]] = []
    for block in blocks:
        if block.kind == THINKING:
            thinking = sse.filler_text(block.tokens)
            out.append({"type": "thinking", "thinking": thinking, "signature": block.data})
        elif block.kind == TOOL_USE:
            out.append(
                {
                    "type": "tool_use",
                    "id": block.tool_id,
                    "name": block.name,
                    "input": json.loads(block.data),
                }
            )
        else:
            out.append({"type": "text", "text": sse.filler_text(block.tokens)})
    return out
