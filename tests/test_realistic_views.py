"""Every view of a realistic run tells the summary JSON's truth: the HTML report's, the LLM
tab's and the breakdown CSV's tables per prompt dataset, conversation turn, content mode and
output-length target, and the trace replayed; InfluxDB's points (dataset tag, output target
and ratio, tokens by kind) and the Grafana panels on them.

One real run of a small workload with all of it (two datasets, conversations, extended
thinking, tools, output-length targets) against the embedded emulator; the report is read in
headless Chromium, the points in a real InfluxDB 1.x (tests/servers.py)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from playwright.sync_api import sync_playwright

from loadkit.numbers import number, percent, usd

from .runs import clean_environment, run_locust
from .servers import InfluxDB1, VictoriaMetrics, free_port
from .test_influxdb import TOKEN, dashboard_results, series_values
from .test_report_browser import BROWSER_ARGS, CHROMIUM, check_layout, read_report

ROOT = Path(__file__).resolve().parent.parent
QUICK = {"ttft_base_ms": 40, "prefill_tokens_per_s": 100_000, "decode_tokens_per_s": 4000,
         "ttft_jitter": 0.0, "decode_jitter": 0.0}  # fmt: skip
EMULATOR = {
    "models": {m: QUICK for m in ("claude-sonnet-4-6", "claude-haiku-4-5")},
    "output_tokens": {"kind": "uniform", "min": 20, "max": 60},
    "thinking_and_tools": {
        "thinking_budget_percent": {"kind": "uniform", "min": 5, "max": 15},
        "tool_call_probability": 0.6,
    },
}
MIXED = {
    "name": "mixed",
    "models": [
        {"model": "claude-sonnet-4-6", "weight": 2},
        {"model": "claude-haiku-4-5", "weight": 1},
    ],
    "datasets": [
        {"path": "workloads/datasets/support.jsonl", "weight": 1},
        {"path": "workloads/datasets/general.jsonl", "weight": 1},
    ],
    "output_tokens_target": {"kind": "uniform", "min": 30, "max": 80},
    "max_tokens": {"kind": "fixed", "value": 2048},
    "thinking": {"budget_tokens": 1024},
    "tools": {"preset": "agent", "tool_choice": "auto", "max_calls_per_turn": 2,
              "latency_ms": {"kind": "fixed", "value": 20}},
    "conversation": {"turns": {"kind": "uniform", "min": 2, "max": 3},
                     "think_time_ms": {"kind": "fixed", "value": 50},
                     "user_tokens": {"kind": "fixed", "value": 30}, "cache": True},
}  # fmt: skip
SECTIONS = {"content", "by-turn", "by-dataset", "output-targets"}

# Per section: the table's rows as the report and the LLM tab show them, from the summary
# JSON (each view formats its numbers by loadkit/numbers.py's rule).


def _groups(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    named = [(f"{g['model']} {g['speed']}", g) for g in data["groups"]]
    return [*named, ("all", data["total"])]


def expected_tables(data: dict[str, Any]) -> dict[str, list[list[str]]]:
    content = [
        [name, number(c["requests"]), number(g["ttft_ms"]["p50"]),
         number(c["ttft_text_ms"]["p50"]), number(c["ttft_text_ms"]["p95"]),
         number(c["thinking_tokens"]), number(c["text_tokens"]), number(c["tool_use_tokens"]),
         number(c["tool_calls"]), number(c["tool_round_trip_ms"]["p50"]),
         number(c["tool_round_trip_ms"]["p95"])]
        for name, g in _groups(data) if (c := g.get("content"))
    ]  # fmt: skip
    turns = [
        [number(t["turn"]), number(t["requests"]), number(t["ttft_ms"]["p50"]),
         number(t["ttft_ms"]["p95"]), percent(t["cache_read_share"]), usd(t["cost_usd"])]
        for t in data.get("by_turn") or []
    ]  # fmt: skip
    datasets = [
        [d["dataset"], number(d["requests"]), number(d["ok"]), number(d["ttft_ms"]["p50"]),
         number(d["ttft_ms"]["p95"]), number(d["otps"]["p50"]), number(d["otps"]["p10"]),
         number(d["e2e_ms"]["p50"]), number(d["e2e_ms"]["p95"]),
         number(d["input_tokens"] + d["cache_read_input_tokens"]
                + d["cache_creation_input_tokens"]),
         number(d["output_tokens"]), usd(d["cost_usd"])]
        for d in data.get("by_dataset") or []
    ]  # fmt: skip
    targets = [
        [name, number(t["requests"]), number(t["measured"]), number(t["ratio"]["p10"]),
         number(t["ratio"]["p50"]), number(t["ratio"]["p90"]), percent(t["within_20pct"]),
         percent(t["at_max_tokens"])]
        for name, g in _groups(data) if (t := g.get("output_target"))
    ]  # fmt: skip
    return {"content": content, "by-turn": turns, "by-dataset": datasets, "output-targets": targets}


# Each section's table of the report, by its heading's id: rows of cell texts, header first.
REPORT_TABLES_JS = """() => Object.fromEntries([...document.querySelectorAll('h2[id]')].map(h => {
  let t = h.nextElementSibling;
  while (t && t.tagName !== 'TABLE') t = t.nextElementSibling;
  return [h.id, [...t.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent))];
}))"""


def read_tables(page: Any, script: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = page.evaluate(script)
    return found


def check_shape(data: dict[str, Any]) -> None:
    """The run has every breakdown, with more than one row where it can."""
    assert len(data["by_dataset"]) == 2, data.get("by_dataset")
    assert len(data["by_turn"]) >= 2
    assert data["total"]["content"]["tool_calls"] > 0
    assert data["total"]["content"]["thinking_tokens"] > 0
    assert data["total"]["output_target"]["measured"] > 0


@pytest.fixture()
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    yield server
    server.stop()


def influx_rows(influx: InfluxDB1, query: str) -> list[dict[str, Any]]:
    """A query's rows as dicts, each with its series' tags."""
    out = []
    for series in series_values(influx.query(query)):
        for values in series["values"]:
            out.append(
                {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
            )
    return out


@pytest.mark.slow
def test_report_and_influxdb_show_the_summary_figures(
    tmp_path: Path, victoria: VictoriaMetrics
) -> None:
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(EMULATOR))
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(MIXED))
    report, lines = tmp_path / "report.html", tmp_path / "points.lp"
    result, data = run_locust(
        tmp_path, "-u", "4", "-r", "4", "-t", "4s", "--stop-timeout", "5",
        "--workload", str(tmp_path / "mixed.yaml"), "--emulator-config",
        str(tmp_path / "emulator.yaml"), "--report", str(report),
        "--influxdb-url", victoria.url, "--influxdb-line-file", str(lines),
        env={"INFLUXDB_V2_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.returncode == 0 and data is not None, result.stderr[-3000:]
    check_shape(data)

    # The HTML report: a section per breakdown, the summary's figures cell by cell.
    charts, text, content = read_report(report, "report-realistic.png")
    check_layout(charts, text, content)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        page.goto(report.as_uri())
        tables = read_tables(page, REPORT_TABLES_JS)
        browser.close()
    assert set(tables) == SECTIONS  # no trace section: none was replayed
    for section, rows in expected_tables(data).items():
        assert tables[section][1:] == rows, section

    # InfluxDB: the points of the run (as written) in a real InfluxDB 1.x.
    assert data["influxdb"]["dropped"] == 0
    influx = InfluxDB1(tmp_path)
    influx.start()
    try:
        influx.write_lines(lines.read_text())
        run = f"\"run_id\" = '{data['run_id']}'"
        panels = dashboard_results(influx, data["run_id"])  # every panel's query runs
        by_dataset = influx_rows(
            influx, f'SELECT count("attempts") FROM "llm_request" WHERE {run} GROUP BY "dataset"'
        )
        targeted = influx_rows(
            influx,
            'SELECT "output_tokens", "output_target", "output_ratio", "outcome" FROM '
            f'"llm_request" WHERE {run} AND "output_target" > 0 GROUP BY "model", "speed"',
        )
        kinds = influx_rows(
            influx,
            'SELECT sum("thinking_tokens") AS "thinking", sum("text_tokens") AS "text", '
            'sum("tool_use_tokens") AS "tool", sum("tool_calls") AS "calls" FROM "llm_request" '
            f"WHERE {run}",
        )
        sessions = influx.query('SHOW TAG KEYS FROM "llm_request"')
    finally:
        influx.stop()
    # a dataset tag per point, counting what the summary counts (cancelled points included)
    counts = {row["dataset"]: row["count"] for row in by_dataset}
    assert counts == {d["dataset"]: d["requests"] + d["cancelled"] for d in data["by_dataset"]}
    tag_keys = {value[0] for s in series_values(sessions) for value in s["values"]}
    assert "dataset" in tag_keys and not tag_keys & {"session", "session_id", "turn"}
    # output targets: asked for by the requests the summary counts, the ratio on completed ones
    for name, group in _groups(data):
        target = group.get("output_target")
        rows = [r for r in targeted if name == "all" or f"{r['model']} {r['speed']}" == name]
        if target is None:
            assert not rows, name
            continue
        ended = [r for r in rows if r["outcome"] != "cancelled"]
        done = [r for r in rows if r["outcome"] == "ok"]
        assert len(ended) == target["requests"] and len(done) == target["measured"], name
        assert all(r["output_ratio"] is None for r in rows if r["outcome"] != "ok")
        for r in done:
            assert r["output_ratio"] == pytest.approx(r["output_tokens"] / r["output_target"])
        within = sum(5 * abs(r["output_tokens"] - r["output_target"]) <= r["output_target"]
                     for r in done)  # fmt: skip
        assert round(within / len(done), 4) == target["within_20pct"], name
    # tokens by kind and tool calls: the summary's content totals
    (kind,) = kinds
    total = data["total"]["content"]
    assert (kind["thinking"], kind["text"], kind["tool"], kind["calls"]) == (
        total["thinking_tokens"], total["text_tokens"], total["tool_use_tokens"],
        total["tool_calls"],
    )  # fmt: skip
    # the new panels: TTFT-text per model x speed, TTFT per dataset, the adherence ratio
    ttft_text = "TTFT vs TTFT-text p50 / p95: thinking, text and tools (content mode)/A"
    groups = {(g["model"], g["speed"]) for g in data["groups"]}
    assert {(s["tags"]["model"], s["tags"]["speed"]) for s in panels[ttft_text]} == groups
    text_p50 = [
        row[s["columns"].index("ttft_text_p50")] for s in panels[ttft_text] for row in s["values"]
    ]
    assert any(v is not None for v in text_p50)
    per_dataset = panels["TTFT p50 / p95 by prompt dataset/A"]
    assert {s["tags"]["dataset"] for s in per_dataset} == {d["dataset"] for d in data["by_dataset"]}
    ratio = panels["Output-length adherence: output tokens / target, p10 / p50 / p90/A"]
    assert {(s["tags"]["model"], s["tags"]["speed"]) for s in ratio} == {
        (g["model"], g["speed"]) for g in data["groups"] if g.get("output_target")
    }
    by_kind = panels["Output tokens / s by kind: thinking, text, tool input (content mode)/A"]
    (series,) = by_kind
    thinking = sum(row[series["columns"].index("thinking")] for row in series["values"]) * 10
    assert thinking == pytest.approx(total["thinking_tokens"])


TRACE = [
    {"timestamp_ms": 100 * i, "model": "claude-haiku-4-5", "input_tokens": 300,
     "max_tokens": 64, "output_tokens": 20}
    for i in range(4)
]  # fmt: skip


@pytest.mark.slow
def test_report_of_a_trace_replay_says_what_was_replayed(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(entry) + "\n" for entry in TRACE))
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(EMULATOR))
    report = tmp_path / "report.html"
    result, data = run_locust(
        tmp_path, "-u", "2", "-r", "2", "-t", "20s", "--trace", str(trace),
        "--trace-speedup", "2", "--emulator-config", str(tmp_path / "emulator.yaml"),
        "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0 and data is not None, result.stderr[-3000:]
    replayed = data["trace"]
    assert replayed["completed"] and replayed["entries"] == len(TRACE)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        page.goto(report.as_uri())
        tables = read_tables(page, REPORT_TABLES_JS)
        browser.close()
    # The trace's output lengths are asked for as output targets: that section too, and none
    # of the workload's (a replay uses no datasets, conversations or content mode).
    assert set(tables) == {"trace", "output-targets"}
    assert tables["output-targets"][1:] == expected_tables(data)["output-targets"]
    assert dict(tables["trace"]) == {
        "trace": replayed["path"],
        "format": replayed["format"],
        "sha256": replayed["sha256"][:12],
        "entries": str(len(TRACE)),
        "speed-up": "2x",
        "processes": "1",
        "completed": "every entry was sent and answered",
    }


# The LLM tab's breakdown tables, by section: rows of cell texts, header first.
TAB_TABLES_JS = """() => Object.fromEntries(
  [...document.querySelectorAll('#loadkit-llm-view .loadkit-breakdown')].map(f => [
    f.dataset.section,
    [...f.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent))]))"""
TAB_SECTIONS = {"content": "content", "turn": "by-turn", "dataset": "by-dataset",
                "output_target": "output-targets"}  # fmt: skip


@pytest.mark.slow
def test_llm_tab_and_csv_show_the_summary_figures(tmp_path: Path) -> None:
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(EMULATOR))
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(MIXED))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "locust.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", "locustfiles/messages.py", "--web-host",
             "127.0.0.1", "--web-port", str(port), "--autostart", "-u", "4", "-r", "4",
             "-t", "4s", "--stop-timeout", "5", "--workload", str(tmp_path / "mixed.yaml"),
             "--emulator-config", str(tmp_path / "emulator.yaml")],
            cwd=ROOT, env=clean_environment(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "loadkit summary" not in log.read_text():  # the run has ended
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        data = httpx2.get(f"{url}/loadkit/summary.json", timeout=10).json()
        check_shape(data)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"{url}/?tab=llm")
            page.wait_for_function(
                "() => document.querySelectorAll('#loadkit-llm-view .loadkit-breakdown')"
                ".length >= 4",
                timeout=20_000,
            )
            tables = read_tables(page, TAB_TABLES_JS)
            page.screenshot(path=str(tmp_path / "llm-tab-realistic.png"), full_page=True)
            browser.close()
        breakdown = httpx2.get(f"{url}/loadkit/breakdown.csv", timeout=10).text
        again = httpx2.get(f"{url}/loadkit/summary.json", timeout=10).json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert again == data  # the run had ended: the figures stand still
    assert set(tables) == set(TAB_SECTIONS)
    expected = expected_tables(data)  # the same strings as the report's
    for key, section in TAB_SECTIONS.items():
        assert tables[key][1:] == expected[section], key
    # The CSV: every figure of the breakdowns, as the JSON holds it.
    rows = list(csv.DictReader(io.StringIO(breakdown)))
    by_key = {(r["section"], r["group"], r["figure"]): r["value"] for r in rows}
    for d in data["by_dataset"]:
        assert by_key[("dataset", d["dataset"], "requests")] == str(d["requests"])
        assert float(by_key[("dataset", d["dataset"], "ttft_ms.p95")]) == d["ttft_ms"]["p95"]
    for t in data["by_turn"]:
        assert float(by_key[("turn", str(t["turn"]), "cost_usd")]) == t["cost_usd"]
    for name, g in _groups(data):
        if g.get("content"):
            got = by_key[("content", name, "tool_calls")]
            assert got == str(g["content"]["tool_calls"])
        if g.get("output_target"):
            got = by_key[("output_target", name, "ratio.p50")]
            assert float(got) == g["output_target"]["ratio"]["p50"]
    sections = {r["section"] for r in rows}
    assert sections == {"dataset", "turn", "content", "output_target"}
