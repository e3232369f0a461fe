"""Validation of a Messages request's prompt, its token count, and its cache breakpoints.

Cache breakpoints follow the prompt caching page (platform.claude.com/docs/en/build-with-claude/
prompt-caching, as of 2026-11): explicit ``cache_control`` on tools, system and message blocks,
at most 4; a top-level ``cache_control`` (automatic caching) marks the last block and takes one
of the 4 slots; longer TTLs must come before shorter ones ("Mixing different TTLs").

Token counting approximation (documented in the README): every text is ceil(UTF-8 bytes / 4)
tokens; each message adds 4 tokens of framing, a system prompt 3, each tool its JSON size / 4
plus 10, each image 1,600, and every request 3. ``count_tokens``, ``usage.input_tokens`` and
the rate limiter all use this one function, so they always agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from loadkit.emulator.errors import invalid

REQUEST_OVERHEAD = 3
MESSAGE_OVERHEAD = 4
SYSTEM_OVERHEAD = 3
TOOL_OVERHEAD = 10
IMAGE_TOKENS = 1600
LONG_TTL = "1h"
MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
TURN_BLOCKS = frozenset(("tool_use", "tool_result", "thinking", "redacted_thinking"))


def text_tokens(text: str) -> int:
    return (len(text.encode("utf-8")) + 3) // 4


@dataclass(slots=True)
class Breakpoint:
    tokens: int  # tokens of the prefix up to and including the marked block
    digest: bytes  # identity of that prefix
    long_ttl: bool
    # (tokens, digest) of the prefixes ending at the blocks before it, nearest last: where a
    # cache hit is also looked for ("20-block lookback window")
    earlier: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Prompt:
    tokens: int
    breakpoints: list[Breakpoint] = field(default_factory=list)
    turn_blocks: bool = False  # tool_use, tool_result, thinking or redacted_thinking blocks


class _Walker:
    """Counts tokens in prompt order (tools, system, messages) and hashes marked prefixes."""

    def __init__(self, cache_key: bytes | None) -> None:
        self.tokens = REQUEST_OVERHEAD
        self.hasher = hashlib.blake2b(cache_key, digest_size=16) if cache_key is not None else None
        self.breakpoints: list[Breakpoint] = []
        self.last_block = ""
        self.last_marked = False  # the last block fed has its own cache_control
        self.boundaries: list[tuple[int, bytes]] = []  # (tokens, digest) after each block
        self.turn_blocks = False

    def feed(self, tokens: int, identity: bytes, block: dict[str, Any] | None, where: str) -> None:
        self.tokens += tokens
        self.last_block = where
        self.last_marked = False
        if self.hasher is None:
            return
        self.hasher.update(identity)
        self.boundaries.append((self.tokens, self.hasher.copy().digest()))
        marker = block.get("cache_control") if block is not None else None
        if marker is None:
            return
        self.mark(_ttl_is_long(marker, f"{where}.cache_control"))
        self.last_marked = True

    def mark(self, long_ttl: bool) -> None:
        """A breakpoint at the end of what has been fed so far."""
        assert self.hasher is not None
        if len(self.breakpoints) == MAX_BREAKPOINTS:
            raise invalid("A maximum of 4 blocks with cache_control may be provided.")
        if long_ttl and self.breakpoints and not self.breakpoints[-1].long_ttl:
            raise invalid(
                f"{self.last_block}.cache_control.ttl: a '1h' cache_control may not come after a "
                "'5m' one; longer TTLs must come before shorter ones"
            )
        earlier = self.boundaries[-LOOKBACK_BLOCKS:-1]
        digest = self.hasher.copy().digest()
        self.breakpoints.append(Breakpoint(self.tokens, digest, long_ttl, earlier))

    def mark_automatic(self, marker: Any) -> None:
        """Top-level ``cache_control``: a breakpoint on the last block, unless that block
        already has one with the same TTL."""
        long_ttl = _ttl_is_long(marker, "cache_control")
        if self.last_marked:
            if self.breakpoints[-1].long_ttl != long_ttl:
                raise invalid(
                    f"cache_control: the last block ({self.last_block}) already has a "
                    "cache_control with another TTL"
                )
            return
        self.mark(long_ttl)


def _ttl_is_long(marker: Any, where: str) -> bool:
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        raise invalid(f'{where}: expected {{"type": "ephemeral"}}')
    ttl = marker.get("ttl", "5m")
    if ttl not in ("5m", LONG_TTL):
        raise invalid(f"{where}.ttl: must be '5m' or '1h', got {ttl!r}")
    return bool(ttl == LONG_TTL)


def _block_tokens(block: Any, where: str, strip_thinking: bool = False) -> tuple[int, bytes]:
    if not isinstance(block, dict):
        raise invalid(f"{where}: expected an object")
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise invalid(f"{where}.text: Field required (a string)")
        return text_tokens(text), text.encode("utf-8")
    if kind == "image":
        return IMAGE_TOKENS, json.dumps(block.get("source"), sort_keys=True).encode()
    if kind in ("tool_use", "tool_result", "thinking", "redacted_thinking", "document"):
        raw = json.dumps(block, sort_keys=True, separators=(",", ":")).encode()
        if strip_thinking and kind in ("thinking", "redacted_thinking"):
            return 0, raw
        return (len(raw) + 3) // 4, raw
    raise invalid(f"{where}.type: unsupported content block type {kind!r}")


def _feed_content(walker: _Walker, content: Any, where: str, strip_thinking: bool = False) -> None:
    if isinstance(content, str):
        walker.feed(text_tokens(content), content.encode("utf-8"), None, where)
        return
    if not isinstance(content, list):
        raise invalid(f"{where}: expected a string or a list of content blocks")
    for i, block in enumerate(content):
        tokens, identity = _block_tokens(block, f"{where}.{i}", strip_thinking)
        walker.feed(tokens, identity, block, f"{where}.{i}")
        if block["type"] in TURN_BLOCKS:
            walker.turn_blocks = True


def current_turn(messages: list[Any]) -> int:
    """Where the current assistant turn begins: after the last user message that is not
    only tool results. Thinking blocks before it are not counted: "previous thinking blocks
    are automatically stripped from the context window calculation", those of the current
    turn (a tool use loop) count (context windows page, platform.claude.com/docs/en/
    build-with-claude/context-windows, "The context window with extended thinking" and
    "... with extended thinking and tool use", as of 2026-11)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list) or not all(
            isinstance(block, dict) and block.get("type") == "tool_result" for block in content
        ):
            return i + 1
    return 0


def analyse_prompt(body: dict[str, Any], cache_key: bytes | None) -> Prompt:
    """Validate tools, system and messages; count tokens; find cache breakpoints.

    ``cache_key`` scopes the cache (model, speed, key); None skips hashing entirely.
    """
    walker = _Walker(cache_key)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools: expected a list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise invalid(f"tools.{i}.name: Field required")
            raw = json.dumps(tool, sort_keys=True, separators=(",", ":")).encode()
            walker.feed((len(raw) + 3) // 4 + TOOL_OVERHEAD, raw, tool, f"tools.{i}")
    system = body.get("system")
    if system is not None:
        walker.tokens += SYSTEM_OVERHEAD
        _feed_content(walker, system, "system")
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: must be a non-empty list")
    turn = current_turn(messages) if len(messages) > 1 else 0
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise invalid(f"{where}: expected an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise invalid(f"{where}.content: Field required")
        walker.tokens += MESSAGE_OVERHEAD
        if walker.hasher is not None:
            walker.hasher.update(b"\x00" + role.encode())
        _feed_content(walker, message["content"], f"{where}.content", i < turn)
    automatic = body.get("cache_control")
    if automatic is not None and walker.hasher is not None:
        walker.mark_automatic(automatic)
    return Prompt(walker.tokens, walker.breakpoints, walker.turn_blocks)
