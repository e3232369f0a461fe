"""The prompt cache: prefixes marked with cache_control, kept for their TTL."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from loadkit.emulator.prompt import Breakpoint


@dataclass(slots=True)
class CacheOutcome:
    read_tokens: int
    creation_tokens: int  # both TTLs: usage.cache_creation_input_tokens
    to_store: list[Breakpoint]
    creation_1h_tokens: int = 0  # of which written with the 1-hour TTL

    @property
    def creation_5m_tokens(self) -> int:
        return self.creation_tokens - self.creation_1h_tokens


class PromptCache:
    def __init__(self, default_ttl_s: float, long_ttl_s: float, max_entries: int) -> None:
        self.default_ttl_s = default_ttl_s
        self.long_ttl_s = long_ttl_s
        self.max_entries = max_entries
        self._expiry: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()  # expiry, 1h

    def plan(self, breakpoints: list[Breakpoint], min_tokens: int, now: float) -> CacheOutcome:
        """What a request reads from the cache and what it would write.

        The longest live prefix is read (and its TTL refreshed), looked for at each
        breakpoint and at the blocks before it (the page's 20-block lookback window); the
        longest marked prefix at or above the model's minimum is written, beyond what was
        read. Of what is written, the part up to the last 1-hour breakpoint is a 1-hour write
        and the rest a 5-minute one (the prompt caching page's "Mixing different TTLs": A
        read, B the last 1h breakpoint, C the last; B - A at the 1h rate, C - B at 5m).
        """
        read, hit = 0, b""
        for bp in breakpoints:
            for tokens, digest in (*bp.earlier, (bp.tokens, bp.digest)):
                if tokens > read:
                    entry = self._expiry.get(digest)
                    if entry is not None and entry[0] > now:
                        read, hit = tokens, digest
        if read:
            self._touch(hit, self._expiry[hit][1], now)
        cacheable = [bp for bp in breakpoints if bp.tokens >= min_tokens and bp.tokens > read]
        if not cacheable:
            return CacheOutcome(read, 0, cacheable)
        long = [bp.tokens for bp in cacheable if bp.long_ttl]
        long_end = long[-1] if long else read
        return CacheOutcome(read, cacheable[-1].tokens - read, cacheable, long_end - read)

    def store(self, breakpoints: list[Breakpoint], now: float) -> None:
        for bp in breakpoints:
            self._touch(bp.digest, bp.long_ttl, now)
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)

    def _touch(self, digest: bytes, long_ttl: bool, now: float) -> None:
        ttl = self.long_ttl_s if long_ttl else self.default_ttl_s
        self._expiry[digest] = (now + ttl, long_ttl)
        self._expiry.move_to_end(digest)

    def clear(self) -> None:
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)
