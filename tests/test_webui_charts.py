"""The web UI's LLM view: its per-window series (merged sketches, settled windows only), the
start form's grouped options, and the live charts in a real headless Chromium mid-run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Page, sync_playwright

from loadkit.aggregate import Aggregate
from loadkit.fallback import POLICIES
from loadkit.locust_plugin.run import Run
from loadkit.locust_plugin.webui_charts import series
from loadkit.locust_plugin.webui_form import GROUPS, form_options, from_form
from loadkit.record import Attempt, ResultRecord

from .runs import own_master_port, wait_for_web_ui
from .test_webui import BROWSER_ARGS, CHROMIUM, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-ant-never-on-a-page-0123456789"
MS = 1_000_000
# Where the test also saves its screenshot, when set (how docs/images/llm-view.png is made).
SCREENSHOT_ENV = "LOADKIT_LLM_VIEW_SCREENSHOT"


def record(ttft_ms: float, e2e_ms: float, tokens: int = 50) -> ResultRecord:
    r = ResultRecord("claude-haiku-4-5", "standard", "t", 100, 200)
    r.t_send = 1_000 * MS
    r.t_first_token = r.t_send + int(ttft_ms * MS)
    r.t_last_token = r.t_end = r.t_send + int(e2e_ms * MS)
    r.output_tokens, r.input_tokens = tokens, 100
    r.attempts = [Attempt("standard", r.t_send, status=200, sent=True)]
    r.served_speed = "standard"
    return r


def test_window_percentiles_come_from_sketches_merged_across_workers() -> None:
    """One worker saw 90 fast requests in window 0, another 10 slow ones: the window's p95 is
    the slow ones' TTFT (the merged sketch's), not the mean of the two workers' p95s."""
    fast, slow, master = Aggregate(), Aggregate(), Aggregate()
    for _ in range(90):
        fast.add(record(100, 500), slices=[("window", 0)])
    for _ in range(10):
        slow.add(record(1000, 1500), slices=[("window", 0)])
    for worker in (fast, slow):
        master.merge_wire(json.loads(json.dumps(worker.take_wire())))
    run = Run(aggregate=master)
    data = series(run, now=master.started_at + 30)
    assert data["t"] == [0]
    (group,) = data["groups"]
    figures = group["figures"]
    assert figures["ttft_p95"][0] == pytest.approx(1000, rel=0.02)  # averaged: 550
    assert figures["ttft_p50"][0] == pytest.approx(100, rel=0.02)
    assert figures["output_tps"] == [100 * 50 / data["window_s"]]


def test_a_window_is_shown_only_once_it_has_settled() -> None:
    """Windows are keyed by intended start: the last one keeps filling while its requests run,
    so it is left out until its end lies a p99 end-to-end time in the past (no false dip);
    once the run has ended, only a window cut short by the end is left out."""
    aggregate = Aggregate()
    for start in (0, 5, 10):
        for _ in range(20):
            aggregate.add(record(200, 2000), slices=[("window", start)])
    run = Run(aggregate=aggregate)
    t0 = aggregate.started_at
    data = series(run, now=t0 + 14)  # settle ~2 s: windows ending by ~12 s
    assert data["t"] == [0, 5] and 1.9 < data["settle_s"] < 2.2
    assert series(run, now=t0 + 17.5)["t"] == [0, 5, 10]
    aggregate.ended_at = t0 + 13
    assert series(run, now=t0 + 100)["t"] == [0, 5]  # [10, 15) was cut short by the end
    aggregate.ended_at = t0 + 15
    assert series(run, now=t0 + 100)["t"] == [0, 5, 10]


def test_headroom_is_the_least_left_of_the_limits_that_apply() -> None:
    """Requests left from the standard limits; tokens left from fast mode's own limits for a
    fast request (the least of input and output), from the standard ``tokens-*`` else."""
    aggregate = Aggregate()
    standard, fast = record(100, 500), record(100, 500)
    fast.speed = "fast"
    standard.rate_limits = {
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-tokens-remaining": "7000",
    }
    fast.rate_limits = {
        **standard.rate_limits,
        "anthropic-fast-input-tokens-remaining": "900",
        "anthropic-fast-output-tokens-remaining": "300",
    }
    for r in (standard, fast):
        aggregate.add(r, slices=[("window", 0)])
    data = series(Run(aggregate=aggregate), now=aggregate.started_at + 30)
    left = {g["speed"]: g["figures"] for g in data["groups"]}
    assert left["standard"]["requests_remaining"] == left["fast"]["requests_remaining"] == [49]
    assert left["standard"]["tokens_remaining"] == [7000]
    assert left["fast"]["tokens_remaining"] == [300]


def test_the_form_shows_only_the_options_the_locustfile_uses_in_groups() -> None:
    names = [name for _, group in GROUPS for name in group]
    extra = {
        name: {"default_value": "", "choices": None, "help_text": name} for name in reversed(names)
    }
    extra["fallback"]["choices"] = ["", "none", "retry"]
    extra["zz_custom"] = {"default_value": "x", "choices": None, "help_text": "another"}
    shown, groups = form_options(extra, uses_sweep=False, uses_influxdb=False)
    assert not [n for n in shown if n.startswith(("sweep", "influxdb"))]
    assert [g["title"] for g in groups] == [
        "Workload and target",
        "Fallback",
        "Open loop and sweep",
        "Outputs",
        "Other",
    ]
    assert list(shown) == [name for g in groups for name in g["fields"]]
    assert list(shown)[:2] == ["workload", "target_url"] and list(shown)[-1] == "zz_custom"
    assert shown["fallback"]["choices"] == ["workload", "none", "retry"]
    assert shown["fallback"]["default_value"] == "workload"
    shown, _ = form_options(extra, uses_sweep=True, uses_influxdb=True)
    assert "sweep_stop" in shown and "influxdb_url" in shown
    assert from_form([("fallback", "workload"), ("sweep", "off"), ("workload", "off")]) == [
        ("fallback", ""),
        ("sweep", ""),
        ("workload", "off"),
    ]


@pytest.fixture()
def web_locust(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "locust.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "INFLUXDB"))}
    env["ANTHROPIC_API_KEY"] = SECRET
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", "locustfiles/messages.py",
             "--web-host", "127.0.0.1", "--web-port", str(port), "--processes", "2",
             "--slo", "ttft_p95_ms<=1500", "--slo", "otps_p50>=40",
             *own_master_port(["--processes"])],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for_web_ui(url, process, log)
        try:
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


LONG_FLOAT = re.compile(r"\d\.\d{4,}")
OVERLAPS = """() => [...document.querySelectorAll('#loadkit-llm-view .loadkit-chart')].map(c => {
  const over = c.querySelector('.u-over').getBoundingClientRect();
  const legend = c.querySelector('.u-legend').getBoundingClientRect();
  const apart = legend.top >= over.bottom || legend.bottom <= over.top
    || legend.left >= over.right || legend.right <= over.left;
  return {chart: c.dataset.key, apart: apart, legendHeight: legend.height};
})"""


def _start_open_loop(page: Page) -> None:
    page.fill("input[name=userCount]", "6")
    page.fill("input[name=spawnRate]", "6")
    page.get_by_text("Custom parameters").click()
    page.fill("input[name=workload]", "workloads/ci.yaml")
    page.fill("input[name=arrivalRate]", "5")  # the form's names are camelCase
    page.get_by_role("button", name="Start").click()


@pytest.mark.slow
def test_llm_view_charts_mid_run(web_locust: str, tmp_path: Path) -> None:
    url = web_locust
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (make test installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.get_by_text("Custom parameters").click()
        page.locator(".loadkit-form-group").nth(3).wait_for(timeout=5_000)
        form_text = page.locator("form").inner_text()
        names = page.eval_on_selector_all("form [name]", "els => els.map(e => e.name)")
        headings = page.locator(".loadkit-form-group").all_inner_texts()
        fallback_shown = page.input_value("form [name=fallback]")
        page.get_by_text("Custom parameters").click()
        _start_open_loop(page)
        page.get_by_role("tab", name="LLM").click()
        # A settled window of every model x speed in ci.yaml on every chart (the view's data)
        page.wait_for_function(
            "() => { const s = window.loadkitLlmView && window.loadkitLlmView.summary();"
            " return s && s.filter(c => c.title.startsWith('TTFT')).length === 3"
            " && s.every(c => c.series.every(l => l.points >= 1)); }",
            timeout=60_000,
        )
        charts = page.evaluate("() => window.loadkitLlmView.summary()")
        box = page.locator("#loadkit-llm-view .u-over").first.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(300)  # the legend now shows the values under the cursor
        view_text = page.locator("#loadkit-llm-view").inner_text()
        legend_values = page.locator("#loadkit-llm-view .u-legend .u-value").all_inner_texts()
        overlaps = page.evaluate(OVERLAPS)
        table_rows = [
            row.locator("td").first.inner_text()
            for row in page.locator("table:not(.u-legend) tbody tr").all()
        ]
        table_text = page.locator("table:not(.u-legend)").inner_text()
        html = page.content()
        shot = tmp_path / "llm-view.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get(SCREENSHOT_ENV):
            page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
        page.get_by_role("tab", name="Download Data").click()
        downloads = page.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        series_text = httpx2.get(f"{url}/loadkit/series.json", timeout=10).text
        page.get_by_role("button", name="Stop").click()
        browser.close()
    # The form: only what messages.py uses, in groups, no blank choice
    assert not [n for n in names if n.startswith(("sweep", "influxdb"))], names
    assert {"workload", "fallback", "arrivalRate", "summaryJson"} <= set(names)
    assert headings == ["Workload and target", "Fallback", "Open loop and sweep", "Outputs"]
    assert form_text.index("Workload (") < form_text.index("Fallback (")
    assert fallback_shown == "workload"
    # Per-model series with data points on every chart; SLO lines; open-loop lateness
    titles = [c["title"] for c in charts]
    groups = ["claude-haiku-4-5 standard", "claude-opus-4-6 fast", "claude-opus-4-6 standard"]
    assert [f"TTFT ms - {g}" for g in groups] == titles[:3]
    otps = next(c for c in charts if c["title"].startswith("OTPS p50"))
    assert [s["label"] for s in otps["series"]][:3] == groups
    assert any(s["label"].startswith("SLO otps_p50 >= 40") for s in otps["series"])
    assert any(s["label"].startswith("SLO ttft_p95_ms <= 1500") for s in charts[0]["series"])
    assert any(t.startswith("Open-loop start lateness") for t in titles)
    assert any(t.startswith("Rate-limit headroom") for t in titles)
    assert any(t.startswith("429 responses and fallbacks") for t in titles)
    assert any(t == "Output tokens/s" for t in titles)
    assert any(v not in ("", "-") for v in legend_values), legend_values
    # Numbers as people read them; legends beside, never over, the plotted lines
    assert not LONG_FLOAT.findall(view_text + table_text), LONG_FLOAT.findall(view_text)
    assert len(overlaps) == len(charts) and all(o["apart"] for o in overlaps), overlaps
    assert table_rows[-1] == "all" and table_rows[0] == groups[0]
    assert "./loadkit/summary.json" in downloads and "./loadkit/llm.csv" in downloads
    assert SECRET not in html and SECRET not in series_text
    summary = httpx2.get(f"{url}/loadkit/summary.json", timeout=10).json()
    assert summary["schema_version"] == 1 and summary["total"]["requests"] > 0
    # The form's "workload" choice reached the run as "" (the workload's own policy)
    assert summary["policy"]["policy"] in POLICIES
