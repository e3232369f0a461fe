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

# (title, unit, queries as (ref, InfluxQL), width, height)
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "TTFT p50 / p95 / p99 by model x speed",
        "ms",
        [
            (
                "A",
                'SELECT percentile("ttft_ms", 50) AS "p50", percentile("ttft_ms", 95) AS "p95", '
                'percentile("ttft_ms", 99) AS "p99" FROM "llm_request" WHERE '
                + SELECTED
                + ' GROUP BY time($__interval), "model", "speed" fill(none)',
            )
        ],
    ),
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
                f'SELECT count("attempts") AS "errors" FROM "llm_request" WHERE '
                f"\"outcome\" != 'ok' AND \"outcome\" != 'cancelled' AND {SELECTED} "
                f'GROUP BY time({WINDOW}), "outcome" fill(none)',
            )
        ],
    ),
    (
        "429s and fallbacks",
        "short",
        [
            (
                "A",
                f'SELECT count("attempts") AS "rate_limited" FROM "llm_request" WHERE '
                f"\"outcome\" = 'rate_limited' AND {SELECTED} "
                f"GROUP BY time({WINDOW}) fill(0)",
            ),
            (
                "B",
                f'SELECT count("attempts") AS "fell_back" FROM "llm_request" WHERE '
                f"\"fallback\" = 'true' AND {SELECTED} GROUP BY time({WINDOW}) fill(0)",
            ),
            (
                "C",
                f'SELECT sum("responses_429") AS "responses_429" FROM "llm_request" WHERE '
                f"{SELECTED} GROUP BY time({WINDOW}) fill(0)",
            ),
        ],
    ),
    (
        "Rate-limit headroom (remaining)",
        "short",
        [
            (
                "A",
                'SELECT last("standard_input_tokens_remaining") AS "input_tokens", '
                'last("standard_output_tokens_remaining") AS "output_tokens", '
                'last("standard_requests_remaining") AS "requests", '
                'last("fast_input_tokens_remaining") AS "fast_input_tokens", '
                'last("fast_output_tokens_remaining") AS "fast_output_tokens" '
                'FROM "llm_ratelimit" WHERE ' + SELECTED + ' GROUP BY time($__interval), "model", '
                '"speed" fill(none)',
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
