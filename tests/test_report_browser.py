"""The ``--report`` HTML of real runs, read in a real headless Chromium (Debian's chromium):
per-model x speed series with data points, no raw floats, legends and labels clear of the
plotted lines, one self-contained file; and a sweep report plotting the SLO's own metric
over the offered load with the capacity marked."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import sync_playwright

from .runs import run_locust

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Set to a folder (docs/images) to keep the screenshots.
SCREENSHOTS = os.environ.get("LOADKIT_REPORT_SCREENSHOTS", "")
RAW_FLOAT = re.compile(r"\d\.\d{4,}")

QUICK = {"ttft_base_ms": 60, "decode_tokens_per_s": 300, "ttft_jitter": 0.1, "decode_jitter": 0.1}
QUICK_EMULATOR = {
    "models": {m: QUICK for m in ("claude-haiku-4-5", "claude-opus-4-6")},
    "output_tokens": {"kind": "uniform", "min": 10, "max": 60},
}
# Two models serving 2 requests at once each, ~0.2 s per request: ~20 requests/s in all.
SLOW = {"ttft_base_ms": 100, "decode_tokens_per_s": 200, "ttft_jitter": 0, "decode_jitter": 0,
        "max_concurrent_streams": 2, "max_queue": 100000}  # fmt: skip
UNLIMITED = {"requests_per_minute": None, "input_tokens_per_minute": None,
             "output_tokens_per_minute": None}  # fmt: skip
SLOW_EMULATOR = {
    "models": {m: SLOW for m in ("claude-haiku-4-5", "claude-opus-4-6")},
    "output_tokens": {"kind": "fixed", "value": 20},
    "rate_limits": {"haiku": UNLIMITED, "opus": UNLIMITED},
}
TWO_MODELS = {
    "name": "two-models",
    "models": [{"model": "claude-haiku-4-5"}, {"model": "claude-opus-4-6"}],
    "prompt_tokens": {"kind": "fixed", "value": 100},
    "max_tokens": {"kind": "fixed", "value": 20},
}

# Every chart's geometry, as the browser laid it out.
CHARTS_JS = """() => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {x: r.left, y: r.top, right: r.right, bottom: r.bottom}; };
  return [...document.querySelectorAll('svg')].map(svg => ({
    title: svg.querySelector('text.title').textContent,
    svg: box(svg),
    plot: svg.querySelector('rect.plot') && box(svg.querySelector('rect.plot')),
    legend: svg.querySelector('g.legend') && box(svg.querySelector('g.legend')),
    texts: [...svg.querySelectorAll('text')].map(t => ({text: t.textContent, ...box(t)})),
    markers: [...svg.querySelectorAll('text.marker-label')].map(t => ({text: t.textContent,
                                                                       ...box(t)})),
    series: [...svg.querySelectorAll('polyline.series')].map(p => ({
      series: p.dataset.series, name: p.dataset.name, ...box(p),
      points: [...Array(p.points.numberOfItems).keys()].map(i => [p.points.getItem(i).x,
                                                                   p.points.getItem(i).y])})),
  }));
}"""


# Every piece of text on the page (the tables' cells, the charts' labels), one a line.
TEXT_JS = """() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const out = [];
  while (walker.nextNode()) out.push(walker.currentNode.textContent);
  return out.join('\\n');
}"""


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["right"]
        and b["x"] < a["right"]
        and a["y"] < b["bottom"]
        and b["y"] < a["bottom"]
    )


def inside(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] >= b["x"] - 0.5
        and a["right"] <= b["right"] + 0.5
        and (a["y"] >= b["y"] - 0.5 and a["bottom"] <= b["bottom"] + 0.5)
    )


def read_report(path: Path, screenshot: str) -> tuple[list[dict[str, Any]], str, str]:
    """The charts' geometry, the page's text and its HTML, from headless Chromium."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (make test installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1840, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(path.as_uri())
        charts = page.evaluate(CHARTS_JS)
        text = page.evaluate(TEXT_JS)
        content = page.content()
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / screenshot), full_page=True)
        browser.close()
    assert requested == [path.as_uri()]  # one self-contained file: nothing else fetched
    return charts, text, content


def check_layout(charts: list[dict[str, Any]], text: str, content: str) -> None:
    assert "<script" not in content.lower()
    raw = RAW_FLOAT.findall(text)
    assert not raw, f"raw floats shown: {raw[:5]}"
    for chart in charts:
        title = chart["title"]
        assert chart["series"], f"{title}: no line"
        for label in chart["texts"]:
            assert inside(label, chart["svg"]), f"{title}: {label['text']!r} is cut off"
        legend, plot = chart["legend"], chart["plot"]
        assert not overlap(legend, plot), f"{title}: the legend overlaps the plot area"
        for line in chart["series"]:
            assert not overlap(legend, line), f"{title}: the legend overlaps {line['name']}"
            assert inside(line, plot), f"{title}: {line['name']} leaves the plot area"
        for marker in chart["markers"]:
            assert inside(marker, chart["svg"]) and not overlap(marker, plot), title


def lines_by_series(chart: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for line in chart["series"]:
        out.setdefault(line["series"], []).append(line)
    return out


def check_per_group(charts: list[dict[str, Any]], groups: set[str], at_least: int) -> None:
    """Every over-time chart and CDF has a line per model x speed with data points."""
    per_group = [c for c in charts if "over time" in c["title"] or "(CDF)" in c["title"]]
    assert len(per_group) >= 6, [c["title"] for c in charts]
    for chart in per_group:
        found = lines_by_series(chart)
        assert set(found) == groups, (chart["title"], set(found))
        for lines in found.values():
            for line in lines:
                want = 50 if "(CDF)" in chart["title"] else at_least
                assert len(line["points"]) >= want, (chart["title"], line["name"])


@pytest.mark.slow
def test_report_of_a_run(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(QUICK_EMULATOR))
    result, data = run_locust(
        tmp_path, "-u", "6", "-r", "6", "-t", "11s", "--workload", "workloads/ci.yaml",
        "--emulator-config", str(tmp_path / "emulator.yaml"), "--report", str(report),
        "--slo", "ttft_p95_ms<=5000",
    )  # fmt: skip
    assert result.returncode == 0 and data is not None, result.stderr[-2000:]
    charts, text, content = read_report(report, "report.png")
    check_layout(charts, text, content)
    groups = {f"{g['model']} {g['speed']}" for g in data["groups"]}
    assert len(groups) == 3  # ci.yaml: haiku standard, opus standard and fast
    check_per_group(charts, groups, at_least=2)
    # the run's context, and the table's rows with p90/p95, the "all" row included
    meta = data["meta"]
    for shown in ("ci", meta["target"], meta["versions"]["locust"], "closed loop"):
        assert shown in text, shown
    assert "TTFT p90 ms" in text and "TTFT p95 ms" in text
    rows = re.findall(r"<tr><td>([^<]+)</td>", content)
    assert set(rows) >= groups | {"all"}
    total = data["total"]
    assert f"<td>all</td><td>{total['requests']:,}</td>" in content


@pytest.mark.slow
def test_report_of_a_sweep(tmp_path: Path) -> None:
    report = tmp_path / "sweep.html"
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(SLOW_EMULATOR))
    (tmp_path / "workload.yaml").write_text(yaml.safe_dump(TWO_MODELS))
    result, data = run_locust(
        tmp_path, "-u", "4", "-r", "4", "--workload", str(tmp_path / "workload.yaml"),
        "--emulator-config", str(tmp_path / "emulator.yaml"), "--sweep", "rate",
        "--sweep-start", "6", "--sweep-step", "10", "--sweep-stop", "26",
        "--sweep-step-duration", "4", "--arrival", "constant",
        "--slo", "schedule_ttft_p95_ms<=400", "--slo", "error_rate<=0.05",
        "--report", str(report), locustfile="locustfiles/sweep.py",
    )  # fmt: skip
    assert data is not None, result.stderr[-3000:]
    sweep = data["sweep"]
    steps = sweep["steps"]
    assert len(steps) >= 2, steps
    charts, text, content = read_report(report, "sweep-report.png")
    check_layout(charts, text, content)
    groups = {f"{g['model']} {g['speed']}" for g in data["groups"]}
    assert groups == {"claude-haiku-4-5 standard", "claude-opus-4-6 standard"}
    check_per_group(charts, groups, at_least=2)
    by_title = {c["title"]: c for c in charts}
    # the SLO's own metric over the offered load: one point per step, left to right
    slo_chart = by_title["schedule_ttft_p95_ms by offered load (req/s offered)"]
    (line,) = slo_chart["series"]
    xs = [x for x, _ in line["points"]]
    assert len(xs) == len([s for s in steps if s["schedule_ttft_ms_p95"] is not None])
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # the curve does not double back
    assert "SLO schedule_ttft_p95_ms<=400" in [t["text"] for t in slo_chart["texts"]]
    assert "error_rate by offered load (req/s offered)" in by_title
    achieved = by_title["Achieved requests/s by offered load (req/s offered)"]
    assert {line["name"] for line in achieved["series"]} == {
        "achieved requests/s", "offered requests/s"
    }  # fmt: skip
    # the capacity marker and its label, readable above the plot
    if sweep["capacity"] is not None:
        label = f"capacity {sweep['capacity']:g}"
        if not sweep["knee_found"]:
            label = f"capacity >= {sweep['capacity']:g} (no knee)"
        assert [m["text"] for m in slo_chart["markers"]] == [label]
    assert "Schedule-relative TTFT over time: p50 (solid), p95 (dashed)" in by_title
