"""Every view of a run tells the same truth: 429 responses vs requests that ended
rate-limited, rows split by how a request was served, scenario defaults, Locust's host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadkit.aggregate import Aggregate
from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.summary import build_summary, figures, format_table, table_rows

from .runs import run_locust
from .test_sweep import META

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000


def fast_record(
    fell_back: bool, ttft_ms: float, decode_s: float, tokens: int = 101
) -> ResultRecord:
    """A fast request: served fast, or 429 then served at standard speed."""
    record = ResultRecord("claude-opus-4-6", "fast", "t", 100, 200)
    record.t_send = 1_000 * MS
    if fell_back:
        record.attempts = [
            Attempt("fast", record.t_send, t_headers=record.t_send + 5 * MS, status=429, sent=True),
            Attempt("standard", record.t_send + 6 * MS, status=200, sent=True),
        ]
        record.fell_back = True
        record.served_speed = "standard"
    else:
        record.attempts = [Attempt("fast", record.t_send, status=200, sent=True)]
        record.served_speed = "fast"
    record.t_first_token = record.t_send + int(ttft_ms * MS)
    record.t_last_token = record.t_first_token + int(decode_s * 1e9)
    record.t_end = record.t_last_token + MS
    record.output_tokens = tokens
    return record


def test_fallbacks_do_not_dilute_the_row_and_429s_are_counted_per_answer() -> None:
    aggregate = Aggregate()
    for _ in range(10):  # served fast: 100 tokens after the first in 0.4 s -> 250 tokens/s
        aggregate.add(fast_record(False, ttft_ms=200, decode_s=0.4))
    for _ in range(5):  # a 429, then standard speed: 1 s -> 100 tokens/s, later first token
        aggregate.add(fast_record(True, ttft_ms=700, decode_s=1.0))
    limited = ResultRecord("claude-opus-4-6", "fast", "t", 100, 200, outcome=Outcome.RATE_LIMITED)
    limited.t_send, limited.t_end = 1_000 * MS, 1_005 * MS
    limited.attempts = [Attempt("fast", limited.t_send, status=429, sent=True) for _ in range(3)]
    aggregate.add(limited)  # three 429 answers (the SDK's retries), one request ended limited
    aggregate.ended_at = aggregate.started_at + 10
    groups, total = figures(aggregate)
    (group,) = groups
    assert group.responses_429 == 5 + 3 and group.rate_limited == 1
    assert group.requests == 16 and group.failures == 1
    served = group.served
    assert served["as_asked"].requests == 11 and served["fell_back"].requests == 5
    assert served["as_asked"].otps.p50 == pytest.approx(250, rel=0.02)
    assert served["fell_back"].otps.p50 == pytest.approx(100, rel=0.02)
    assert served["as_asked"].ttft_ms.p50 == pytest.approx(200, rel=0.02)
    assert served["fell_back"].ttft_ms.p50 == pytest.approx(700, rel=0.02)
    # The printed table (and the LLM tab, which shows the same rows) splits the row.
    rows = [r for r in table_rows(groups, total) if r["model"] == "claude-opus-4-6"]
    assert [r["served"] for r in rows] == ["as asked", "fell back (standard)"]
    assert rows[0]["otps"]["p50"] == served["as_asked"].otps.p50
    assert rows[0]["responses_429"] == 8 and rows[0]["rate_limited"] == 1
    table = format_table(build_summary(aggregate, "run", META))
    assert "429 resp" in table and "429 end" in table and "fell back (standard)" in table


def test_wide_figures_stay_apart_in_the_printed_table() -> None:
    """Every figure of a row is its own word, however wide: 4-digit OTPS values (fast Haiku
    on a quick emulator) once ran together as ``3,984.73,984.7``."""
    aggregate = Aggregate()
    for _ in range(10):  # 1,000 tokens after the first in 0.25 s -> ~4,000 tokens/s
        aggregate.add(fast_record(False, ttft_ms=123_456, decode_s=0.25, tokens=1_001))
    aggregate.ended_at = aggregate.started_at + 10
    table = format_table(build_summary(aggregate, "run", META))
    (row,) = (line for line in table.splitlines() if line.startswith("claude-opus-4-6"))
    cells = row.split()
    # model, speed (served is empty without fallbacks), then 16 figures: one word each
    assert len(cells) == 2 + 16, row
    assert cells[10:13] == ["3,984.7"] * 3, row  # OTPS p10, p50, p90


def run_scenario(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    return run_locust(tmp_path, *args, locustfile="locustfiles/fast_fallback.py")


@pytest.mark.slow
@pytest.mark.timing
def test_fallback_scenario_runs_as_it_stands_and_reports_each_check(tmp_path: Path) -> None:
    """``fast_fallback.py`` with no workload or emulator options uses its own, provokes fast
    429s, prints one PASS line per end check, and Locust's report names the target."""
    report = tmp_path / "locust.html"
    result, data = run_scenario(
        tmp_path, "-u", "100", "-r", "100", "-t", "8s", "--stop-timeout", "5s",
        "--fallback", "retry-then-standard", "--html", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert data["validation"]["breaches"] == 0
    checks = data["validation"]["checks"]
    assert {c["check"] for c in checks} >= {"accounting", "fast-mode 429s provoked"}
    for check in checks:
        assert f"PASS {check['check']}: {check['measured']}" in result.stderr
    (group,) = data["groups"]
    # Thousands of 429s can happen with no request ending rate-limited: both are shown.
    attempts_429 = sum(n for k, n in group["attempt_outcomes"].items() if "rate_limited" in k)
    assert group["responses_429"] == attempts_429 > 0
    assert group["responses_429"] > group["rate_limited"]
    # Served fast, a request decodes at 2.5x the speed of one that fell back to standard
    # (the emulator's speeds carry the same jitter: the ratio of the medians holds).
    served = group["served"]
    assert served["fell_back"]["requests"] >= 20, served
    ratio = served["as_asked"]["otps"]["p50"] / served["fell_back"]["otps"]["p50"]
    assert ratio == pytest.approx(2.5, rel=0.1)
    # Locust's own report names the target (the embedded emulator), not "None".
    html = report.read_text()
    assert "http://127.0.0.1:" in html and "Target Host: None" not in html


@pytest.mark.slow
def test_a_sweep_does_not_warn_that_users_are_ignored(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "locustfiles/sweep.py", "--headless",
         "--only-summary", "--summary-json", str(summary), "-u", "2", "--sweep", "rate",
         "--sweep-start", "2", "--sweep-step", "2", "--sweep-stop", "4",
         "--sweep-step-duration", "2", "--workload", "workloads/ci.yaml"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert summary.exists(), output[-3000:]
    assert "ignored" not in output
    steps = json.loads(summary.read_text())["sweep"]["steps"]
    assert steps and steps[0]["offered"] == 2
