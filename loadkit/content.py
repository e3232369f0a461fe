"""Content mode: an answer's content blocks rebuilt from its raw stream.

Plain requests only count their deltas (``client._read_events``). A request that needs its
answer (a conversation appends it to the next turn; a tool call is answered) carries an
``Answer``: the client then hands it every content event, and it rebuilds the blocks as the
Messages streaming page describes them (platform.claude.com/docs/en/build-with-claude/
streaming, "Event types" and "Content block delta types", as of 2026-11): ``text_delta``,
``thinking_delta`` and one ``signature_delta`` for a thinking block, ``input_json_delta``
pieces that join to a tool_use block's input JSON.

``usage.output_tokens`` does not say how many tokens were thinking, text or tool JSON. The
answer's output tokens are shared out by the characters of each kind (thinking text, text,
partial JSON): exact when the kinds cost the same characters per token, as they do on the
emulator; on the real API an estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loadkit.record import ResultRecord

EVENT_PREFIX = b"event: content_block_"
DATA = b"\ndata: "


@dataclass(slots=True)
class Answer:
    """The content of one answer, as it streams in (index -> block)."""

    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    partial_json: dict[int, list[str]] = field(default_factory=dict)
    t_first_text: int = 0
    thinking_chars: int = 0
    text_chars: int = 0
    json_chars: int = 0
    broken: str = ""  # why a block could not be rebuilt ("" when none)

    def clear(self) -> None:
        """Forget an earlier call's answer (a fallback sends the request again)."""
        self.blocks, self.partial_json = {}, {}
        self.t_first_text = self.thinking_chars = self.text_chars = self.json_chars = 0
        self.broken = ""

    def feed(self, chunk: bytes, now: int) -> None:
        """Every content_block_* event of ``chunk`` (whole events, as the client cuts them)."""
        start = chunk.find(EVENT_PREFIX)
        while start >= 0:
            data_at = chunk.find(DATA, start)
            if data_at < 0:
                return
            end = chunk.find(b"\n", data_at + len(DATA))
            if end < 0:
                end = len(chunk)
            try:
                event = json.loads(chunk[data_at + len(DATA) : end])
            except ValueError:
                self.broken = self.broken or "a content event's data is not JSON"
            else:
                if isinstance(event, dict):
                    self._take(event, now)
            start = chunk.find(EVENT_PREFIX, end)

    def _take(self, event: dict[str, Any], now: int) -> None:
        kind = event.get("type")
        index = event.get("index")
        if not isinstance(index, int):
            return
        if kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict):
                self.blocks[index] = dict(block)
                if block.get("type") == "tool_use":
                    self.partial_json[index] = []
            return
        block = self.blocks.get(index)
        if block is None:
            return
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            what = delta.get("type")
            if what == "text_delta":
                text = delta.get("text", "")
                block["text"] = block.get("text", "") + text
                self.text_chars += len(text)
                if not self.t_first_text:
                    self.t_first_text = now
            elif what == "thinking_delta":
                text = delta.get("thinking", "")
                block["thinking"] = block.get("thinking", "") + text
                self.thinking_chars += len(text)
            elif what == "signature_delta":
                block["signature"] = block.get("signature", "") + delta.get("signature", "")
            elif what == "input_json_delta":
                piece = delta.get("partial_json", "")
                self.partial_json.setdefault(index, []).append(piece)
                self.json_chars += len(piece)
        elif kind == "content_block_stop" and index in self.partial_json:
            joined = "".join(self.partial_json.pop(index))
            try:
                block["input"] = json.loads(joined) if joined else {}
            except ValueError:
                self.broken = self.broken or f"tool_use block {index}: input is not JSON"
                block["loadkit_incomplete"] = True

    def content(self) -> list[dict[str, Any]]:
        """The blocks to send back as the assistant's turn: in order, complete ones only (a
        tool_use cut before its end has no input; an empty text block is refused by the API)."""
        out = []
        for _, block in sorted(self.blocks.items()):
            kind = block.get("type")
            if kind == "tool_use" and ("loadkit_incomplete" in block or "input" not in block):
                continue
            if kind == "text" and not block.get("text"):
                continue
            if kind == "text":
                block = {"type": "text", "text": block["text"]}  # citations left out
            out.append(block)
        return out

    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content() if b.get("type") == "tool_use"]

    def settle(self, record: ResultRecord) -> None:
        """Stamp the record: first text token, tool calls, output tokens by kind."""
        record.parsed_content = True
        record.t_first_text = self.t_first_text
        record.tool_calls = len(self.tool_uses())
        total = self.thinking_chars + self.text_chars + self.json_chars
        tokens = record.output_tokens
        if not total:
            record.thinking_tokens = record.tool_use_tokens = 0
            record.text_tokens = tokens
            return
        record.thinking_tokens = round(tokens * self.thinking_chars / total)
        record.tool_use_tokens = round(tokens * self.json_chars / total)
        rest = tokens - record.thinking_tokens - record.tool_use_tokens
        if rest < 0:  # both rounded up past the total
            record.tool_use_tokens += rest
            rest = 0
        record.text_tokens = rest
