"""The cost guard: a spending cap that no request may cross, by reserving before sending.

Each request reserves the most it can cost (its whole prompt billed as input, written to the
cache at the cache-write price where a prefix is marked, and ``max_tokens`` of output) and
settles at its real cost when it ends. A request that would take the reserved plus spent
estimate past the cap is not sent: the run stops there, never above the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadkit.catalog import CACHE_WRITE_MULTIPLIER, cost_usd


def worst_case_cost(
    model: str, speed: str, prompt_tokens: int, max_tokens: int, cached_tokens: int, ttl: str
) -> float:
    return cost_usd(
        model,
        speed,
        input_tokens=max(0, prompt_tokens - cached_tokens),
        output_tokens=max_tokens,
        cache_creation_tokens=cached_tokens,
        cache_ttl=ttl if ttl in CACHE_WRITE_MULTIPLIER else "1h",
    )


@dataclass
class Budget:
    cap_usd: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    exhausted: bool = False

    def reserve(self, estimate_usd: float) -> bool:
        if self.spent_usd + self.reserved_usd + estimate_usd > self.cap_usd:
            self.exhausted = True
            return False
        self.reserved_usd += estimate_usd
        return True

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd
