"""The web UI in a real headless Chromium: the start form's custom parameters and the LLM tab."""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import sync_playwright

from loadkit.numbers import number, percent, usd

from .runs import own_master_port, wait_for_web_ui

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECRET = "sk-ant-do-not-render-0123456789"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

LLM_TABLE = "table:not(.u-legend):not(#loadkit-llm-view table)"
# The LLM table's columns, in order, and the rule of loadkit/numbers.py each figure reads by.
COUNTS = ["requests", "failures", "cancelled", "responses_429", "rate_limited"]
FIGURES = ["ttft_p50", "ttft_p90", "ttft_p99", "otps_p10", "otps_p50", "otps_p90", "e2e_p50",
           "e2e_p99", "input_tps", "output_tps"]  # fmt: skip
FORMATS = [("group", ""), ("served", ""), *((k, "count") for k in COUNTS),
           ("failures_by_type", ""), *((k, "number") for k in FIGURES),
           ("cache_hit_pct", "percent"), ("cost_usd", "usd")]  # fmt: skip


def as_reported(value: Any, form: str) -> str:
    """A cell as the report would show its figure."""
    if isinstance(value, str) or not form:
        return str(value)
    if value is None:
        return number(None)
    if form == "count":
        return number(int(value))
    return {"number": number, "percent": percent, "usd": usd}[form](float(value))


def table_and_its_figures(page: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The stats the page polled last and the LLM table's cells, by group, rendered from
    them (read between two polls, which are 2 s apart)."""
    polls: list[Any] = []
    page.on("response", lambda r: polls.append(r) if r.url.endswith("/stats/requests") else None)
    for _ in range(5):
        with page.expect_response(lambda r: r.url.endswith("/stats/requests")) as caught:
            pass
        seen = len(polls)
        page.wait_for_timeout(300)  # React renders it
        cells = [
            r.locator("td").all_inner_texts() for r in page.locator(f"{LLM_TABLE} tbody tr").all()
        ]
        if len(polls) == seen:
            return caught.value.json(), {row[0]: row for row in cells}
    raise AssertionError("the table could not be read between two polls")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def web_locust(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "locust.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = SECRET
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", "locustfiles/messages.py",
             "--web-host", "127.0.0.1", "--web-port", str(port), "--processes", "2",
             *own_master_port(["--processes"])],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for_web_ui(url, process, log)
        try:
            yield url, log
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow
def test_llm_tab_with_workload_chosen_in_the_form(
    web_locust: tuple[str, Path], tmp_path: Path
) -> None:
    url, log = web_locust
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (make test installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(url)
        assert SECRET not in page.content()
        page.fill("input[name=userCount]", "6")
        page.fill("input[name=spawnRate]", "6")
        page.get_by_text("Custom parameters").click()
        assert page.input_value("input[name=workload]") == "workloads/default.yaml"
        page.fill("input[name=workload]", "workloads/ci.yaml")
        page.get_by_role("button", name="Start").click()
        page.get_by_role("tab", name="LLM").click()
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{LLM_TABLE} tr')].some("
            "r => r.innerText.includes('claude-opus-4-6 fast'))",
            timeout=30_000,
        )
        # (Locust's LLM table, not the charts' legends nor the view's breakdown tables)
        headers = page.locator(f"{LLM_TABLE} th").all_inner_texts()
        assert "TTFT p50 ms" in headers and "OTPS p50" in headers and "Est. cost $" in headers
        payload, rows = table_and_its_figures(page)
        page.screenshot(path=str(tmp_path / "llm-tab.png"), full_page=True)
        assert SECRET not in page.content()
        page.get_by_role("button", name="Stop").click()
        browser.close()
    # The workload chosen in the form reached both workers: only ci.yaml's models ran.
    assert "claude-haiku-4-5 standard" in rows and "claude-opus-4-6 fast" in rows
    assert not any("sonnet" in name for name in rows)
    haiku = dict(zip(headers, rows["claude-haiku-4-5 standard"], strict=True))
    assert haiku["Requests"] not in ("", "-", "0") and haiku["TTFT p50 ms"] != "-"
    # Each figure reads as the report shows it (loadkit/numbers.py), from the figures the
    # page was sent.
    figures = next(t["data"] for t in payload["extended_stats"] if t["key"] == "llm")
    assert {r["group"] for r in figures} == set(rows)
    for row in figures:
        assert rows[row["group"]] == [as_reported(row[key], form) for key, form in FORMATS]
    # The CSV download holds the same rows as plain numbers.
    llm_csv = httpx2.get(f"{url}/loadkit/llm.csv", timeout=10).text
    table = list(csv.DictReader(io.StringIO(llm_csv)))
    assert {r["name"] for r in table} >= {"claude-haiku-4-5 standard", "all"}
    for row in table:
        for key in ("requests", "ttft_p50", "otps_p50", "cache_hit_pct", "cost_usd"):
            float(row[key])  # "1,300.1" or "68.5%" would not parse
    # The accounting line is the summary's last: wait for it, not for the summary.
    deadline = time.monotonic() + 30
    while "accounting:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert "loadkit summary" in text and "accounting: all" in text
    assert SECRET not in text


@pytest.mark.slow
def test_a_refused_start_says_why_in_the_form(web_locust: tuple[str, Path]) -> None:
    """A start loadkit refuses (here a workload file that does not exist) shows its reason in
    the start form, and nothing starts."""
    url, log = web_locust
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(url)
        page.fill("input[name=userCount]", "2")
        page.get_by_text("Custom parameters").click()
        page.fill("input[name=workload]", "workloads/no-such-file.yaml")
        page.get_by_role("button", name="Start").click()
        page.get_by_text("no-such-file.yaml").first.wait_for(timeout=15_000)
        shown = page.content()
        browser.close()
    assert "loadkit:" in shown
    state = httpx2.get(f"{url}/stats/requests", timeout=5).json()["state"]
    assert state in ("ready", "stopped")
    assert "loadkit run" not in log.read_text()  # no run was prepared
