"""Build the Grafana dashboard JSON from one list of panels and their InfluxQL queries.

    python dashboards/generate.py        # rewrites dashboards/grafana/dashboards/loadkit.json

Queries are InfluxQL, which runs unchanged on InfluxDB 1.x, on 2.x through its automatic
database/retention-policy mapping, and on 3.x; tests execute every one of them against a
real InfluxDB 1.x holding a real run's points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "influxdb", "uid": "loadkit-influxdb"}
OUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "loadkit.json"
# Every request query filters on the dashboard's variables.
SELECTED = (
    '"run_id" =~ /^$run_id$/ AND "model" =~ /^$model$/ AND "speed" =~ /^$speed$/ AND $timeFilter'
)
WINDOW = "10s"  # rates are per second over fixed 10 s buckets
FAILED = "\"outcome\" != 'ok' AND \"outcome\" != 'cancelled'"  # cancellations are no errors

ONLY_TIME = "$timeFilter"


def _percentiles(field: str, source: str = '"llm_request"', where: str = SELECTED) -> str:
    """p50, p95 and p99 of a field by model x speed."""
    return (
        f'SELECT percentile("{field}", 50) AS "p50", percentile("{field}", 95) AS "p95", '
        f'percentile("{field}", 99) AS "p99" FROM {source} WHERE {where} '
        'GROUP BY time($__interval), "model", "speed" fill(none)'
    )


def _zero_filled_count(name: str, condition: str, group_by: str = "") -> str:
    """Requests matching ``condition`` per 10 s, 0 where none did. (A count over points a
    condition leaves out returns no series at all, whatever fill() says; summed with a zero
    count over every selected request, each window has a value.)"""
    by = f", {group_by}" if group_by else ""
    return (
        f'SELECT sum("n") AS "{name}" FROM '
        f'(SELECT count("attempts") AS "n" FROM "llm_request" WHERE {condition} AND {SELECTED} '
        f"GROUP BY time({WINDOW}){by}), "
        f'(SELECT count("attempts") * 0 AS "n" FROM "llm_request" WHERE {SELECTED} '
        f"GROUP BY time({WINDOW})) "
        f"WHERE {ONLY_TIME} GROUP BY time({WINDOW}){by} fill(0)"
    )


# schedule-relative TTFT = TTFT + the start's lateness (queue_ms: 0 closed-loop), per point
SCHEDULE_TTFT = (
    '(SELECT "ttft_ms" + "queue_ms" AS "schedule_ttft_ms" FROM "llm_request" WHERE '
    + SELECTED
    + ' GROUP BY "model", "speed")'
)
TOKEN_HEADROOM = (
    "standard_input_tokens",
    "standard_output_tokens",
    "fast_input_tokens",
    "fast_output_tokens",
)

# (title, unit, queries as (ref, InfluxQL))
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("TTFT p50 / p95 / p99 by model x speed", "ms", [("A", _percentiles("ttft_ms"))]),
    (
        "OTPS p50 by model x speed",
        "none",
        [
            (
                "A",
                'SELECT percentile("otps", 50) AS "otps_p50" FROM "llm_request" WHERE '
                + SELECTED
                + ' GROUP BY time($__interval), "model", "speed" fill(none)',
            )
        ],
    ),
    # E2E as the summary defines it: completed requests only (a request cut or failed early
    # has a short e2e_ms of its own, which would pull the percentiles under TTFT's)
    (
        "E2E p50 / p95 / p99 by model x speed",
        "ms",
        [("A", _percentiles("e2e_ms", where=SELECTED + " AND \"outcome\" = 'ok'"))],
    ),
    (
        "Schedule-relative TTFT p50 / p95 / p99 (from the intended start)",
        "ms",
        [("A", _percentiles("schedule_ttft_ms", SCHEDULE_TTFT, ONLY_TIME))],
    ),
    (
        "Start lateness (queue) p50 / p95 / p99: open loop",
        "ms",
        [("A", _percentiles("queue_ms"))],
    ),
    (
        "Output tokens / s",
        "none",
        [
            (
                "A",
                f'SELECT sum("output_tokens") / 10 AS "output_tokens_per_s" FROM "llm_request" '
                f'WHERE {SELECTED} GROUP BY time({WINDOW}), "model", "speed" fill(0)',
            )
        ],
    ),
    (
        "Requests / s by outcome",
        "reqps",
        [
            (
                "A",
                f'SELECT count("attempts") / 10 AS "requests_per_s" FROM "llm_request" '
                f'WHERE {SELECTED} GROUP BY time({WINDOW}), "outcome" fill(0)',
            )
        ],
    ),
    (
        "Errors by type",
        "short",
        [
            (
                "A",
                f'SELECT count("attempts") AS "errors" FROM "llm_request" WHERE {FAILED} AND '
                f'{SELECTED} GROUP BY time({WINDOW}), "error_type" fill(0)',
            ),
            ("B", _zero_filled_count("all_errors", FAILED)),
        ],
    ),
    (
        "429s and fallbacks",
        "short",
        [
            ("A", _zero_filled_count("rate_limited", "\"outcome\" = 'rate_limited'")),
            ("B", _zero_filled_count("fell_back", "\"fallback\" = 'true'")),
            (
                "C",
                f'SELECT sum("responses_429") AS "responses_429" FROM "llm_request" WHERE '
                f"{SELECTED} GROUP BY time({WINDOW}) fill(0)",
            ),
        ],
    ),
    (
        "Rate-limit headroom: requests remaining",
        "short",
        [
            (
                "A",
                'SELECT last("standard_requests_remaining") AS "requests" FROM "llm_ratelimit" '
                "WHERE " + SELECTED + ' GROUP BY time($__interval), "model", "speed" fill(none)',
            )
        ],
    ),
    (
        "Rate-limit headroom: tokens remaining",
        "short",
        [
            (
                "A",
                "SELECT "
                + ", ".join(f'last("{name}_remaining") AS "{name}"' for name in TOKEN_HEADROOM)
                + ' FROM "llm_ratelimit" WHERE '
                + SELECTED
                + ' GROUP BY time($__interval), "model", "speed" fill(none)',
            )
        ],
    ),
    (
        "TTFT vs TTFT-text p50 / p95: thinking, text and tools (content mode)",
        "ms",
        [
            (
                "A",
                'SELECT percentile("ttft_ms", 50) AS "ttft_p50", percentile("ttft_ms", 95) AS '
                '"ttft_p95", percentile("ttft_text_ms", 50) AS "ttft_text_p50", '
                'percentile("ttft_text_ms", 95) AS "ttft_text_p95" FROM "llm_request" WHERE '
                + SELECTED
                + ' GROUP BY time($__interval), "model", "speed" fill(none)',
            )
        ],
    ),
    (
        "Output tokens / s by kind: thinking, text, tool input (content mode)",
        "none",
        [
            (
                "A",
                'SELECT sum("thinking_tokens") / 10 AS "thinking", sum("text_tokens") / 10 AS '
                '"text", sum("tool_use_tokens") / 10 AS "tool_input" FROM "llm_request" WHERE '
                f"{SELECTED} GROUP BY time({WINDOW}) fill(0)",
            )
        ],
    ),
    (
        "TTFT p50 / p95 by prompt dataset",
        "ms",
        [
            (
                "A",
                'SELECT percentile("ttft_ms", 50) AS "p50", percentile("ttft_ms", 95) AS "p95" '
                f'FROM "llm_request" WHERE "dataset" != \'\' AND {SELECTED} '
                'GROUP BY time($__interval), "dataset" fill(none)',
            )
        ],
    ),
    (
        "Output-length adherence: output tokens / target, p10 / p50 / p90",
        "none",
        [
            (
                "A",
                'SELECT percentile("output_ratio", 10) AS "p10", percentile("output_ratio", 50) '
                'AS "p50", percentile("output_ratio", 90) AS "p90" FROM "llm_request" WHERE '
                + SELECTED
                + ' GROUP BY time($__interval), "model", "speed" fill(none)',
            )
        ],
    ),
    (
        "Users",
        "short",
        [
            (
                "A",
                'SELECT last("users") AS "users" FROM "llm_run" WHERE "run_id" =~ /^$run_id$/ '
                "AND $timeFilter GROUP BY time($__interval) fill(previous)",
            )
        ],
    ),
    (
        "Cumulative estimated cost (USD)",
        "currencyUSD",
        [
            (
                "A",
                'SELECT cumulative_sum(sum("cost_usd")) AS "cost_usd" FROM "llm_request" WHERE '
                + SELECTED
                + f" GROUP BY time({WINDOW}) fill(0)",
            )
        ],
    ),
]

VARIABLES = [
    ("run_id", 'SHOW TAG VALUES FROM "llm_request" WITH KEY = "run_id"', False),
    ("model", 'SHOW TAG VALUES FROM "llm_request" WITH KEY = "model"', True),
    ("speed", 'SHOW TAG VALUES FROM "llm_request" WITH KEY = "speed"', True),
]
ANNOTATION_QUERY = 'SELECT "text" FROM "llm_run" WHERE "run_id" =~ /^$run_id$/ AND $timeFilter'


def _panel(index: int, title: str, unit: str, queries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": ref,
                "datasource": DATASOURCE,
                "query": query,
                "rawQuery": True,
                "resultFormat": "time_series",
            }
            for ref, query in queries
        ],
    }


def _variable(name: str, query: str, include_all: bool) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "refresh": 2,
        "includeAll": include_all,
        "allValue": ".*" if include_all else None,
        "multi": include_all,
        "sort": 2 if name == "run_id" else 1,
        "current": {},
    }


def build() -> dict[str, Any]:
    return {
        "uid": "loadkit",
        "title": "loadkit: Messages API load test",
        "tags": ["loadkit", "llm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [_variable(*v) for v in VARIABLES]},
        "annotations": {
            "list": [
                {
                    "name": "Run events",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "rgba(255, 96, 96, 1)",
                    "query": ANNOTATION_QUERY,
                    "textColumn": "text",
                }
            ]
        },
        "panels": [_panel(i, *panel) for i, panel in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
