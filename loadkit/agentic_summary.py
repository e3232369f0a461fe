"""The summary's conversation and content-mode figures: per group (first text token, output
tokens by kind, tool calls and round trips) and per turn index, as JSON and printed lines."""

from __future__ import annotations

from typing import Any

from loadkit.aggregate import Aggregate, Group, combine
from loadkit.results import Percentiles, RunSummary, TurnFigures

QUANTILES = (0.5, 0.95)


def _percentiles(group: Group, sketch: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = group.sketches[sketch].quantile(q)
        out[f"p{round(q * 100)}"] = None if value is None else round(value, 3)
    return out


def content_figures(group: Group) -> dict[str, Any] | None:
    """``results.ContentFigures`` of a group; None when no answer of it was rebuilt."""
    totals = group.totals
    if not totals["content_requests"]:
        return None
    return {
        "requests": totals["content_requests"],
        "ttft_text_ms": _percentiles(group, "ttft_text_ms"),
        "thinking_tokens": totals["thinking_tokens"],
        "text_tokens": totals["text_tokens"],
        "tool_use_tokens": totals["tool_use_tokens"],
        "tool_calls": totals["tool_calls"],
        "tool_round_trip_ms": _percentiles(group, "tool_round_trip_ms"),
    }


def by_turn(aggregate: Aggregate) -> list[TurnFigures] | None:
    """Per turn index of the conversations (the aggregate's ``turn`` slices); None without."""
    turns = aggregate.slices("turn")
    if not turns:
        return None
    rows = []
    for turn, groups in turns.items():
        group = combine(groups.values())
        totals = group.totals
        read = totals["cache_read_input_tokens"]
        prompt = totals["input_tokens"] + read + totals["cache_creation_input_tokens"]
        rows.append(
            TurnFigures(
                turn=turn,
                requests=totals["requests"] - group.outcomes.get("cancelled", 0),
                ttft_ms=Percentiles(**_percentiles(group, "ttft_ms")),
                cache_read_share=round(read / prompt, 4) if prompt else None,
                cost_usd=round(group.cost_usd, 6),
            )
        )
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def content_lines(summary: RunSummary) -> list[str]:
    """The printed table's lines for content mode and per turn (none when neither is there)."""
    lines: list[str] = []
    rows = [(g.model, g.speed, g.content) for g in summary.groups if g.content is not None]
    if rows and summary.total.content is not None:
        rows.append(("all", "", summary.total.content))
        lines.append(
            "content (TTFT-text: to the first text token; tokens by kind shared out by "
            "characters; tool RT: tool call's end to the first token after its result, ms)"
        )
        lines.append(
            f"{'model':<18}{'speed':<9}{'reqs':>7}{'TTFT-text p50':>15}{'p95':>8}"
            f"{'thinking tok':>14}{'text tok':>10}{'tool tok':>10}{'tool calls':>12}"
            f"{'tool RT p50':>13}{'p95':>8}"
        )
        for model, speed, c in rows:
            lines.append(
                f"{model:<18}{speed:<9}{c.requests:>7}{_ms(c.ttft_text_ms.p50):>15}"
                f"{_ms(c.ttft_text_ms.p95):>8}{c.thinking_tokens:>14,}{c.text_tokens:>10,}"
                f"{c.tool_use_tokens:>10,}{c.tool_calls:>12,}"
                f"{_ms(c.tool_round_trip_ms.p50):>13}{_ms(c.tool_round_trip_ms.p95):>8}"
            )
    if summary.by_turn:
        lines.append("by turn (conversations; every request numbered, tool_result ones included)")
        lines.append(
            f"{'turn':>6}{'reqs':>7}{'TTFT p50':>10}{'p95':>8}{'cache read':>12}{'cost $':>10}"
        )
        for t in summary.by_turn:
            share = "-" if t.cache_read_share is None else f"{t.cache_read_share:.1%}"
            lines.append(
                f"{t.turn:>6}{t.requests:>7}{_ms(t.ttft_ms.p50):>10}{_ms(t.ttft_ms.p95):>8}"
                f"{share:>12}{t.cost_usd:>10.4f}"
            )
    return lines
