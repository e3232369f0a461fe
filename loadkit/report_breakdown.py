"""The HTML report's sections for realistic workloads, each only when the run had it: per
prompt dataset, per conversation turn, content mode (first text token, output tokens by kind,
tool calls and round trips), output-length targets, and the trace replayed.

Every figure is read from the typed ``RunSummary``: the numbers the printed table shows
(``dataset_table``, ``agentic_summary``, ``adherence``), formatted by ``loadkit.numbers``.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from loadkit.numbers import number, percent, usd
from loadkit.results import GroupFigures, RunSummary

Table = Callable[[list[str], list[list[str]]], str]


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _groups(summary: RunSummary) -> list[tuple[str, GroupFigures]]:
    """Each model x speed, then all of them."""
    named: list[tuple[str, GroupFigures]] = [(f"{g.model} {g.speed}", g) for g in summary.groups]
    return [*named, ("all", summary.total)]


DATASET_HEADERS = [
    "dataset", "requests", "ok", "TTFT p50 ms", "TTFT p95 ms", "OTPS p50", "OTPS p10",
    "E2E p50 ms", "E2E p95 ms", "input tokens", "output tokens", "cost",
]  # fmt: skip


def datasets(summary: RunSummary, table: Table) -> str:
    if not summary.by_dataset:
        return ""
    rows = [
        [
            g.dataset, number(g.requests), number(g.ok), number(g.ttft_ms.p50),
            number(g.ttft_ms.p95), number(g.otps.p50), number(g.otps.p10), number(g.e2e_ms.p50),
            number(g.e2e_ms.p95),
            number(g.input_tokens + g.cache_read_input_tokens + g.cache_creation_input_tokens),
            number(g.output_tokens), usd(g.cost_usd),
        ]
        for g in summary.by_dataset
    ]  # fmt: skip
    return (
        '<h2 id="by-dataset">By prompt dataset</h2>'
        "<p>Requests whose prompt came from each dataset, over every model x speed; input "
        "tokens include cache reads and writes.</p>" + table(DATASET_HEADERS, rows)
    )


TURN_HEADERS = ["turn", "requests", "TTFT p50 ms", "TTFT p95 ms", "cache read share", "cost"]


def turns(summary: RunSummary, table: Table) -> str:
    if not summary.by_turn:
        return ""
    rows = [
        [
            number(t.turn), number(t.requests), number(t.ttft_ms.p50), number(t.ttft_ms.p95),
            percent(t.cache_read_share), usd(t.cost_usd),
        ]
        for t in summary.by_turn
    ]  # fmt: skip
    return (
        '<h2 id="by-turn">By conversation turn</h2>'
        "<p>Every request of the conversations by its turn (tool_result requests numbered "
        "too); cache read share: cache reads over all input tokens.</p>" + table(TURN_HEADERS, rows)
    )


CONTENT_HEADERS = [
    "model x speed", "requests", "TTFT p50 ms", "TTFT-text p50 ms", "TTFT-text p95 ms",
    "thinking tokens", "text tokens", "tool-input tokens", "tool calls", "tool round trip p50 ms",
    "tool round trip p95 ms",
]  # fmt: skip


def content(summary: RunSummary, table: Table) -> str:
    rows = []
    for name, group in _groups(summary):
        c = group.content
        if c is None:
            continue
        rows.append(
            [
                name, number(c.requests), number(group.ttft_ms.p50), number(c.ttft_text_ms.p50),
                number(c.ttft_text_ms.p95), number(c.thinking_tokens), number(c.text_tokens),
                number(c.tool_use_tokens), number(c.tool_calls),
                number(c.tool_round_trip_ms.p50), number(c.tool_round_trip_ms.p95),
            ]
        )  # fmt: skip
    if not rows:
        return ""
    return (
        '<h2 id="content">Thinking, text and tools</h2>'
        "<p>Answers read block by block. TTFT is to the first token of any kind (thinking "
        "included), TTFT-text to the first text token. Output tokens by kind are shared out by "
        "the characters of each answer's thinking, text and tool input. Tool round trip: from "
        "the end of the answer that called a tool to the first token of the answer to its "
        "result (the tool's latency included).</p>" + table(CONTENT_HEADERS, rows)
    )


TARGET_HEADERS = [
    "model x speed", "targeted", "measured", "ratio p10", "ratio p50", "ratio p90",
    "within 20%", "at max_tokens",
]  # fmt: skip


def output_targets(summary: RunSummary, table: Table) -> str:
    rows = []
    for name, group in _groups(summary):
        t = group.output_target
        if t is None:
            continue
        rows.append(
            [
                name, number(t.requests), number(t.measured), number(t.ratio.p10),
                number(t.ratio.p50), number(t.ratio.p90), percent(t.within_20pct),
                percent(t.at_max_tokens),
            ]
        )  # fmt: skip
    if not rows:
        return ""
    return (
        '<h2 id="output-targets">Output-length targets</h2>'
        "<p>Requests that asked for an output length; of those that completed (measured), "
        "the ratio output tokens / target, the share within 20% of the target and the share "
        "cut by max_tokens.</p>" + table(TARGET_HEADERS, rows)
    )


def trace(summary: RunSummary) -> str:
    found = summary.trace
    if found is None:
        return ""
    rows = [
        ("trace", found.path),
        ("format", found.format),
        ("sha256", found.sha256[:12]),
        ("entries", number(found.entries)),
        ("speed-up", f"{found.speedup:g}x" + (", looped" if found.loop else "")),
        ("processes", number(found.processes)),
        (
            "completed",
            "every entry was sent and answered"
            if found.completed
            else "not every entry was sent and answered",
        ),
    ]
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<h2 id="trace">Trace replay</h2><table class="context">{cells}</table>'


def breakdowns(summary: RunSummary, table: Table) -> str:
    """Every section the run had, in the printed table's order, trace first."""
    return (
        trace(summary)
        + content(summary, table)
        + turns(summary, table)
        + datasets(summary, table)
        + output_targets(summary, table)
    )
