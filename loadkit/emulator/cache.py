"""The prompt cache: prefixes marked with cache_control, kept for their TTL."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from loadkit.emulator.prompt import Breakpoint


@dataclass(slots=True)
class CacheOutcome:
    read_tokens: int
    creation_tokens: int
    to_store: list[Breakpoint]


class PromptCache:
    def __init__(self, default_ttl_s: float, long_ttl_s: float, max_entries: int) -> None:
        self.default_ttl_s = default_ttl_s
        self.long_ttl_s = long_ttl_s
        self.max_entries = max_entries
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def plan(self, breakpoints: list[Breakpoint], min_tokens: int, now: float) -> CacheOutcome:
        """What a request reads from the cache and what it would write.

        The longest live marked prefix is read (and its TTL refreshed); the longest marked
        prefix at or above the model's minimum is written, beyond what was read.
        """
        read = 0
        for bp in reversed(breakpoints):
            expiry = self._expiry.get(bp.digest)
            if expiry is not None and expiry > now:
                read = bp.tokens
                self._touch(bp, now)
                break
        cacheable = [bp for bp in breakpoints if bp.tokens >= min_tokens and bp.tokens > read]
        creation = cacheable[-1].tokens - read if cacheable else 0
        return CacheOutcome(read, creation, cacheable)

    def store(self, breakpoints: list[Breakpoint], now: float) -> None:
        for bp in breakpoints:
            self._touch(bp, now)
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)

    def _touch(self, bp: Breakpoint, now: float) -> None:
        ttl = self.long_ttl_s if bp.long_ttl else self.default_ttl_s
        self._expiry[bp.digest] = now + ttl
        self._expiry.move_to_end(bp.digest)

    def clear(self) -> None:
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)
