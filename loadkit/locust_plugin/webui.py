"""loadkit in Locust's web UI: the "LLM" tab (live charts per model x speed, and the summary
table from the merged sketches), its downloads, and the start form's grouped options."""

from __future__ import annotations

import argparse
import csv
import hmac
import io
import json
import os
from pathlib import Path
from typing import Any

from loadkit.emulator.config import ConfigError, load_config
from loadkit.locust_plugin.capacity import LIVE_WINDOWS
from loadkit.locust_plugin.costguard import check_spending_cap
from loadkit.locust_plugin.options import request_timeout
from loadkit.locust_plugin.run import Run, load_workload_option, resolve_path
from loadkit.locust_plugin.sweepshape import SweepShape
from loadkit.locust_plugin.targets import TargetPolicy, TargetRefused
from loadkit.locust_plugin.webui_breakdown import CSV_FIELDS, breakdown_rows, live_summary
from loadkit.locust_plugin.webui_charts import series
from loadkit.locust_plugin.webui_form import form_options, from_form
from loadkit.results import GroupFigures, finite, summary_json
from loadkit.slo import SLOError, parse_slos
from loadkit.summary import figures, table_rows
from loadkit.workload import WorkloadError

TAB = "llm"
STATIC = Path(__file__).parent / "static"
# The page's own scripts: the uPlot chart library (vendored, for offline use), the report's
# number formats and the view. Put first in <head>: deferred before Locust's module script, they
# run before it reads window.templateArgs (the view gives the LLM table its cell formats).
HEAD = (
    '<link rel="stylesheet" href="./loadkit/static/vendor/uplot/uPlot.min.css">'
    '<link rel="stylesheet" href="./loadkit/static/llm-view.css">'
    '<script src="./loadkit/static/vendor/uplot/uPlot.iife.min.js"></script>'
    '<script src="./loadkit/static/numbers.js" defer></script>'
    '<script src="./loadkit/static/llm-view.js" defer></script>'
)
# "user:password" for HTTP basic auth on the whole web UI (from the environment only).
WEB_AUTH_ENV = "LOADKIT_WEB_AUTH"
# Plain numbers (the CSV holds them as numbers); the tab formats them as the report does,
# each column by its rule of loadkit/numbers.py (static/numbers.js): "" for text.
COLUMNS = [
    ("name", "Model x speed", ""),
    ("served", "Served", ""),
    ("requests", "Requests", "count"),
    ("failures", "Failures", "count"),
    ("cancelled", "Cancelled (run end)", "count"),
    ("responses_429", "429 responses", "count"),
    ("rate_limited", "Ended rate-limited", "count"),
    ("failures_by_type", "Failures by type", ""),
    ("ttft_p50", "TTFT p50 ms", "number"),
    ("ttft_p90", "TTFT p90 ms", "number"),
    ("ttft_p99", "TTFT p99 ms", "number"),
    ("otps_p10", "OTPS p10", "number"),
    ("otps_p50", "OTPS p50", "number"),
    ("otps_p90", "OTPS p90", "number"),
    ("e2e_p50", "E2E p50 ms", "number"),
    ("e2e_p99", "E2E p99 ms", "number"),
    ("input_tps", "Input tok/s", "number"),
    ("output_tps", "Output tok/s", "number"),
    ("cache_hit_pct", "Cache hit %", "percent"),
    ("cost_usd", "Est. cost $", "usd"),
]


def _num(value: float | None, digits: int | None = 1) -> float | str:
    return "" if value is None else value if digits is None else round(value, digits)


def rows(run: Run, page: bool = False) -> list[dict[str, Any]]:
    """The summary table's rows (``table_rows``), as plain numbers: the CSV's to 0.1 (the
    cost to 6 decimals), the page's unrounded with the cache hit as a share (for
    numbers.js's percent(), so that the tab rounds each figure once, as the report does)."""
    digits, cost_digits = (None, None) if page else (1, 6)
    model_groups, total = figures(run.aggregate)
    groups: dict[tuple[str, str], GroupFigures] = {(g.model, g.speed): g for g in model_groups}
    groups[("all", "")] = total
    out = []
    for row in table_rows(model_groups, total):
        group = groups[(row["model"], row["speed"])]
        first = row["failures"] is not None
        hit = group.cache_hit_ratio
        if hit is not None and not page:
            hit *= 100  # the CSV's column is a percentage
        out.append(
            {
                "name": f"{row['model']} {row['speed']}".strip(),
                "served": row["served"],
                "requests": row["requests"],
                "failures": row["failures"] if first else "",
                "cancelled": row["cancelled"] if first else "",
                "responses_429": row["responses_429"] if first else "",
                "rate_limited": row["rate_limited"] if first else "",
                "failures_by_type": ", ".join(
                    f"{k} x{v}" for k, v in sorted(row["failures_by_type"].items())
                ),
                "ttft_p50": _num(row["ttft_ms"]["p50"], digits),
                "ttft_p90": _num(row["ttft_ms"]["p90"], digits),
                "ttft_p99": _num(row["ttft_ms"]["p99"], digits),
                "otps_p10": _num(row["otps"]["p10"], digits),
                "otps_p50": _num(row["otps"]["p50"], digits),
                "otps_p90": _num(row["otps"]["p90"], digits),
                "e2e_p50": _num(row["e2e_ms"]["p50"], digits),
                "e2e_p99": _num(row["e2e_ms"]["p99"], digits),
                "input_tps": _num(group.input_tokens_per_s, digits) if first else "",
                "output_tps": _num(group.output_tokens_per_s, digits) if first else "",
                "cache_hit_pct": _num(hit, digits) if first else "",
                "cost_usd": _num(group.cost_usd, cost_digits) if first else "",
            }
        )
    return out


def preflight(run: Run, form: Any) -> str | None:
    """Why the run the start form asks for cannot start (None: it can)."""
    options = run.options

    def field(name: str) -> str:
        value = form.get(name)
        return str(getattr(options, name, "") or "") if value is None else str(value)

    try:
        workload = load_workload_option(field("workload"))
        if field("emulator_config"):
            load_config(resolve_path(field("emulator_config")))
        parse_slos([*workload.slos, *(getattr(options, "slo", None) or [])])
        try:
            request_timeout(field("request_timeout"))
        except argparse.ArgumentTypeError as err:
            return f"--request-timeout {err}"
        target = (
            field("target_url")
            or str(form.get("host") or "")
            or os.environ.get("ANTHROPIC_BASE_URL", "")
        )
        embedded = run.emulator.base_url if run.emulator is not None else ""
        if target and target.rstrip("/") != embedded:
            policy = run.targets or TargetPolicy(frozenset())
            if policy.key_for(target) == "real":  # raises TargetRefused
                cap = field("max_cost_usd") or "0"
                try:
                    max_cost = float(cap)
                except ValueError:
                    return f"max_cost_usd {cap!r} is not a number"
                check_spending_cap(target, max_cost)
    except (WorkloadError, ConfigError, SLOError, TargetRefused) as err:
        return str(err)
    return None


def _page_key(column: str) -> str:
    # Locust's table sorts its rows by their "name" unless told otherwise (and an extended
    # table cannot be): under another key, the rows keep their order, "all" last.
    return "group" if column == "name" else column


def _uses_sweep(environment: Any) -> bool:
    shapes = [environment.shape_class, *(environment.available_shape_classes or {}).values()]
    return any(isinstance(shape, SweepShape) for shape in shapes)


def install(web_ui: Any, run: Run) -> None:
    from flask import Response, jsonify, request, send_from_directory
    from werkzeug.datastructures import ImmutableMultiDict

    # Every process slices its figures by time window, for the charts.
    setattr(run.options, LIVE_WINDOWS, True)
    # The form's custom parameters keep the order given (the page's JSON sorts keys else).
    web_ui.app.jinja_env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    web_ui.template_args["extended_tabs"] = [{"title": "LLM", "key": TAB}]
    web_ui.template_args["extended_tables"] = [
        {
            "key": TAB,
            "structure": [
                {"key": _page_key(key), "title": title, "format": form}
                for key, title, form in COLUMNS
            ],
        }
    ]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./loadkit/llm.csv", "title": "LLM figures per model x speed (CSV)"},
        {
            "href": "./loadkit/breakdown.csv",
            "title": "LLM figures by dataset, turn, content and output target (CSV)",
        },
        {"href": "./loadkit/summary.json", "title": "loadkit summary (JSON)"},
    ]
    locust_template_args = web_ui.update_template_args

    def update_template_args() -> None:
        locust_template_args()
        args = web_ui.template_args
        args["extra_options"], args["loadkit_form_groups"] = form_options(
            args["extra_options"],
            uses_sweep=_uses_sweep(run.environment),
            uses_influxdb=bool(getattr(run.options, "influxdb_url", "")),
        )

    web_ui.update_template_args = update_template_args

    @web_ui.app.after_request
    def add_llm_view(response: Any) -> Any:
        if request.path.endswith("/stats/requests") and response.is_json:
            payload = response.get_json()
            page_rows = [{_page_key(k): v for k, v in row.items()} for row in rows(run, page=True)]
            payload["extended_stats"] = [{"key": TAB, "data": finite(page_rows)}]
            response.set_data(json.dumps(payload))
            return response
        index = (request.endpoint or "").rsplit(".", 1)[-1] == "index"  # in Locust's blueprint
        if index and response.mimetype == "text/html":
            page = response.get_data(as_text=True)
            response.set_data(page.replace("<head>", "<head>" + HEAD, 1))
        return response

    credentials = os.environ.get(WEB_AUTH_ENV, "")
    if credentials:

        @web_ui.app.before_request
        def basic_auth() -> Any:
            """Every page and endpoint, Locust's own included, behind HTTP basic auth."""
            given = request.authorization
            user, _, password = credentials.partition(":")
            if (
                given is not None
                and given.type == "basic"
                and hmac.compare_digest(given.username or "", user)
                and hmac.compare_digest(given.password or "", password)
            ):
                return None
            return Response(
                "authentication required",
                401,
                {"WWW-Authenticate": 'Basic realm="loadkit"'},
            )

    @web_ui.app.before_request
    def refuse_a_bad_start() -> Any:
        """Check the start form's loadkit fields before Locust starts anything, so that a
        refused start says why in the form (Locust shows a /swarm answer's message)."""
        if request.method != "POST" or not request.path.endswith("/swarm"):
            return None
        request.form = ImmutableMultiDict(from_form(request.form.items(multi=True)))
        if web_ui.web_login:
            from flask_login import current_user

            if not current_user.is_authenticated:
                return None  # Locust's login refuses it
        reason = preflight(run, request.form)
        if reason is None:
            return None
        return jsonify({"success": False, "message": f"loadkit: {reason}", "host": ""})

    @web_ui.app.route("/loadkit/llm.csv")
    @web_ui.auth_required_if_enabled
    def llm_csv() -> Any:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[key for key, _, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows(run))
        return Response(buffer.getvalue(), mimetype="text/csv")

    @web_ui.app.route("/loadkit/summary.json")
    @web_ui.auth_required_if_enabled
    def llm_summary() -> Any:
        return Response(summary_json(live_summary(run)), mimetype="application/json")

    @web_ui.app.route("/loadkit/breakdown.csv")
    @web_ui.auth_required_if_enabled
    def llm_breakdown_csv() -> Any:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(breakdown_rows(live_summary(run)))
        return Response(buffer.getvalue(), mimetype="text/csv")

    @web_ui.app.route("/loadkit/series.json")
    @web_ui.auth_required_if_enabled
    def llm_series() -> Any:
        return Response(
            json.dumps(finite(series(run)), allow_nan=False), mimetype="application/json"
        )

    @web_ui.app.route("/loadkit/static/<path:name>")
    @web_ui.auth_required_if_enabled
    def llm_static(name: str) -> Any:
        return send_from_directory(STATIC, name, max_age=0)
