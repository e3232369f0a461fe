"""The "LLM" tab of Locust's web UI: per model x speed figures from the merged sketches."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from loadkit.locust_plugin.state import STATE
from loadkit.summary import summary_data

TAB = "llm"
COLUMNS = [
    ("name", "Model x speed"),
    ("requests", "Requests"),
    ("failures", "Failures"),
    ("failures_by_type", "Failures by type"),
    ("ttft_p50", "TTFT p50 ms"),
    ("ttft_p90", "TTFT p90 ms"),
    ("ttft_p99", "TTFT p99 ms"),
    ("otps_p10", "OTPS p10"),
    ("otps_p50", "OTPS p50"),
    ("otps_p90", "OTPS p90"),
    ("e2e_p50", "E2E p50 ms"),
    ("e2e_p99", "E2E p99 ms"),
    ("input_tps", "Input tok/s"),
    ("output_tps", "Output tok/s"),
    ("cache_hit", "Cache hit"),
    ("rate_limited", "429s"),
    ("cost_usd", "Est. cost $"),
]


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def rows() -> list[dict[str, Any]]:
    data = summary_data(STATE.aggregate, STATE.run_id, STATE.fallback_settings)
    out = []
    for group in [*data["groups"], {"model": "all", "speed": "", **data["total"]}]:
        hit = group["cache_hit_ratio"]
        out.append(
            {
                "name": f"{group['model']} {group['speed']}".strip(),
                "requests": group["requests"],
                "failures": group["failures"],
                "failures_by_type": ", ".join(
                    f"{k} x{v}" for k, v in sorted(group["failures_by_type"].items())
                ),
                "ttft_p50": _num(group["ttft_ms"]["p50"]),
                "ttft_p90": _num(group["ttft_ms"]["p90"]),
                "ttft_p99": _num(group["ttft_ms"]["p99"]),
                "otps_p10": _num(group["otps"]["p10"]),
                "otps_p50": _num(group["otps"]["p50"]),
                "otps_p90": _num(group["otps"]["p90"]),
                "e2e_p50": _num(group["e2e_ms"]["p50"]),
                "e2e_p99": _num(group["e2e_ms"]["p99"]),
                "input_tps": _num(group["input_tokens_per_s"]),
                "output_tps": _num(group["output_tokens_per_s"]),
                "cache_hit": "" if hit is None else f"{hit:.1%}",
                "rate_limited": group["rate_limited"],
                "cost_usd": f"{group['cost_usd']:.4f}",
            }
        )
    return out


def install(web_ui: Any) -> None:
    from flask import Response, request

    web_ui.template_args["extended_tabs"] = [{"title": "LLM", "key": TAB}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}
    ]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./loadkit/llm.csv", "title": "LLM figures per model x speed (CSV)"}
    ]

    @web_ui.app.after_request
    def add_llm_rows(response: Any) -> Any:
        if request.path.endswith("/stats/requests") and response.is_json:
            payload = response.get_json()
            payload["extended_stats"] = [{"key": TAB, "data": rows()}]
            response.set_data(json.dumps(payload))
        return response

    @web_ui.app.route("/loadkit/llm.csv")
    @web_ui.auth_required_if_enabled
    def llm_csv() -> Any:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[key for key, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows())
        return Response(buffer.getvalue(), mimetype="text/csv")

    @web_ui.app.route("/loadkit/summary.json")
    @web_ui.auth_required_if_enabled
    def llm_summary() -> Any:
        return Response(
            json.dumps(summary_data(STATE.aggregate, STATE.run_id, STATE.fallback_settings)),
            mimetype="application/json",
        )
