"""The web UI's live summary and its breakdowns as CSV: per prompt dataset, per conversation
turn, content mode and output-length targets per model x speed, and the trace replayed.

``live_summary`` is what ``/loadkit/summary.json`` serves and the LLM tab's tables read; the
CSV (``/loadkit/breakdown.csv``) holds the same figures in long form, one a row
(``section, group, figure, value``), with the summary JSON's field names and values.
"""

from __future__ import annotations

from typing import Any

from loadkit.locust_plugin import trace_replay
from loadkit.locust_plugin.meta import current_meta
from loadkit.locust_plugin.run import Run
from loadkit.results import GroupFigures, RunSummary, finite
from loadkit.summary import build_summary

CSV_FIELDS = ["section", "group", "figure", "value"]
DATASET_FIGURES = (
    "requests", "ok", "ttft_ms.p50", "ttft_ms.p95", "otps.p50", "otps.p10", "e2e_ms.p50",
    "e2e_ms.p95", "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
    "output_tokens", "cost_usd",
)  # fmt: skip
TURN_FIGURES = ("requests", "ttft_ms.p50", "ttft_ms.p95", "cache_read_share", "cost_usd")
CONTENT_FIGURES = (
    "requests", "ttft_text_ms.p50", "ttft_text_ms.p95", "thinking_tokens", "text_tokens",
    "tool_use_tokens", "tool_calls", "tool_round_trip_ms.p50", "tool_round_trip_ms.p95",
)  # fmt: skip
TARGET_FIGURES = (
    "requests", "measured", "ratio.p10", "ratio.p50", "ratio.p90", "within_20pct",
    "at_max_tokens",
)  # fmt: skip
TRACE_FIGURES = ("path", "format", "sha256", "entries", "speedup", "loop", "processes", "completed")


def live_summary(run: Run) -> RunSummary:
    """The run's summary as it stands (the trace replayed, when there is one)."""
    summary = build_summary(
        run.aggregate, run.run_id, current_meta(run), run.fallback_settings, run.dataset_names
    )
    if run.trace is not None:
        summary = summary.model_copy(update={"trace": trace_replay.section(run.trace)})
    return summary


def _get(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        value = value[part]
    return value


def _rows(section: str, group: str, data: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    return [
        {"section": section, "group": group, "figure": name, "value": _get(data, name)}
        for name in names
    ]


def _per_group(summary: RunSummary) -> list[tuple[str, GroupFigures]]:
    named: list[tuple[str, GroupFigures]] = [(f"{g.model} {g.speed}", g) for g in summary.groups]
    return [*named, ("all", summary.total)]


def breakdown_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """The breakdowns' figures, one a row (none for a run without any: the CSV's header)."""
    rows: list[dict[str, Any]] = []
    for dataset in summary.by_dataset or []:
        rows += _rows("dataset", dataset.dataset, dataset.model_dump(), DATASET_FIGURES)
    for turn in summary.by_turn or []:
        rows += _rows("turn", str(turn.turn), turn.model_dump(), TURN_FIGURES)
    for name, group in _per_group(summary):
        if group.content is not None:
            rows += _rows("content", name, group.content.model_dump(), CONTENT_FIGURES)
    for name, group in _per_group(summary):
        if group.output_target is not None:
            rows += _rows("output_target", name, group.output_target.model_dump(), TARGET_FIGURES)
    if summary.trace is not None:
        rows += _rows("trace", "", summary.trace.model_dump(), TRACE_FIGURES)
    return [{**row, "value": _cell(row["value"])} for row in finite(rows)]


def _cell(value: Any) -> Any:
    """None as an empty cell, booleans as JSON writes them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
