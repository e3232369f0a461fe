"""The start form's custom parameters: only those the locustfile uses, in groups.

Locust lists every ``include_in_web_ui`` option, sorted by name. Here the list is filtered
(sweep options only with a sweep load shape, InfluxDB options only when an InfluxDB URL was
given at start) and ordered by group; the page's script (static/llm-view.js) draws each
group's heading. An option with an empty choice gets a named one (``off``, ``workload``),
since the form shows an empty choice as a blank, crossed-out looking entry; the start request
is translated back (``from_form``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Workload and target",
        (
            "workload",
            "target_url",
            "emulator_config",
            "workload_seed",
            "request_timeout",
            "http_stack",
            "max_cost_usd",
        ),
    ),
    ("Fallback", ("fallback", "recover_at", "storm_grace")),
    (
        "Open loop and sweep",
        (
            "arrival_rate",
            "arrival",
            "max_in_flight",
            "sweep",
            "sweep_start",
            "sweep_step",
            "sweep_step_duration",
            "sweep_stop",
            "trace",
            "trace_format",
            "trace_speedup",
            "trace_loop",
            "trace_model",
            "trace_speed",
            "trace_block_size",
        ),
    ),
    (
        "Outputs",
        (
            "summary_json",
            "records",
            "report",
            "junit",
            "influxdb_url",
            "influxdb_org",
            "influxdb_bucket",
            "influxdb_optional",
            "influxdb_line_file",
        ),
    ),
)
OTHER = "Other"
# option -> the name its empty choice is shown as
EMPTY_CHOICE = {"fallback": "workload", "sweep": "off"}


def _used(name: str, uses_sweep: bool, uses_influxdb: bool) -> bool:
    if name.startswith("sweep"):
        return uses_sweep
    if name.startswith("influxdb_"):
        return uses_influxdb
    return True


def _named_choice(name: str, option: dict[str, Any]) -> dict[str, Any]:
    shown = EMPTY_CHOICE.get(name)
    choices = option.get("choices")
    if shown is None or not choices or "" not in choices:
        return option
    return {
        **option,
        "choices": [shown if choice == "" else choice for choice in choices],
        "default_value": option.get("default_value") or shown,
    }


def form_options(
    extra_options: dict[str, dict[str, Any]], uses_sweep: bool, uses_influxdb: bool
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Locust's ``extra_options`` filtered and ordered by group, and the groups
    (``{"title", "fields"}``) as the page shows them."""
    placed = {name for _, names in GROUPS for name in names}
    ordered: dict[str, dict[str, Any]] = {}
    groups = []
    for title, names in (*GROUPS, (OTHER, tuple(n for n in extra_options if n not in placed))):
        fields = [
            name
            for name in names
            if name in extra_options and _used(name, uses_sweep, uses_influxdb)
        ]
        for name in fields:
            ordered[name] = _named_choice(name, extra_options[name])
        if fields:
            groups.append({"title": title, "fields": fields})
    return ordered, groups


def from_form(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A start request's fields with the named empty choices made empty again."""
    return [(key, "" if EMPTY_CHOICE.get(key) == value else value) for key, value in fields]
