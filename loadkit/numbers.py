"""Numbers as people read them: thousands separated, a few significant digits, never a raw
float (``1176.3664397015052`` is shown as ``1,176``). Shared by every human-facing view."""

from __future__ import annotations

import math

MISSING = "-"  # no value (no request had one)


def number(value: float | None) -> str:
    """At most 3 decimals, fewer as the value grows: 0.0123 -> '0.012', 3.14159 -> '3.14',
    42.195 -> '42.2', 1176.37 -> '1,176'; integers whole: 12345 -> '12,345'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:,.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size < 0.001:
        return "<0.001" if value > 0 else ">-0.001"
    return f"{value:.3f}"


def percent(share: float | None) -> str:
    """A share (0..1) as a percentage with one decimal: 0.0123 -> '1.2%'."""
    if share is None or not math.isfinite(share):
        return MISSING
    return f"{share * 100:.1f}%"


def usd(value: float | None) -> str:
    """Dollars to the cent; amounts under a dollar in cents (3 significant digits at most)."""
    if value is None or not math.isfinite(value):
        return MISSING
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"{number(value * 100)}¢"


def tick(value: float) -> str:
    """An axis tick (round values already): no trailing zeros, thousands separated."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) < 0.001:
        return f"{value:.0e}"
    return f"{value:.3f}".rstrip("0").rstrip(".")
