"""Capacity planning and CI gates: SLO parsing, open loop, sweeps, gates, cost guard, report."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.slo import SLOError, parse_slo, parse_slos
from loadkit.sweep import SweepPlan

from .runs import run_locust

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold", "model", "speed"),
    [
        ("ttft_p95_ms<=1500", "ttft_p95_ms", "<=", 1500, None, None),
        ("otps_p50 >= 40", "otps_p50", ">=", 40, None, None),
        ("error_rate<=0.01", "error_rate", "<=", 0.01, None, None),
        ("model=claude-opus-4-6,speed=fast:ttft_p99_ms<=2500", "ttft_p99_ms", "<=", 2500,
         "claude-opus-4-6", "fast"),
        ("schedule_ttft_p99.9_ms<3000", "schedule_ttft_p99.9_ms", "<", 3000, None, None),
    ],
)  # fmt: skip
def test_slo_expressions(
    text: str, metric: str, op: str, threshold: float, model: str | None, speed: str | None
) -> None:
    slo = parse_slo(text)
    assert (slo.metric, slo.op, slo.threshold, slo.model, slo.speed) == (
        metric, op, threshold, model, speed,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p95<=1500", "write ttft_pNN_ms"),
        ("latency<=5", "unknown metric 'latency'"),
        ("ttft_p95_ms=<5", "expected"),
        ("speed=warp:ttft_p95_ms<=5", "scope"),
        ("ttft_p100_ms<=5", "between 0 and 100"),
        ("otps_p50_ms>=5", "write otps_pNN"),
    ],
)
def test_bad_slo_expressions_are_named(text: str, message: str) -> None:
    with pytest.raises(SLOError, match=message):
        parse_slo(text)


def test_several_slos_in_one_option() -> None:
    assert len(parse_slos(["ttft_p95_ms<=1; error_rate<=0.1", "otps_p50>=3"])) == 3


def test_sweep_plan_steps() -> None:
    plan = SweepPlan("rate", 5, 5, 10, 30)
    assert plan.steps == 6 and plan.load(5) == 30
    assert plan.step_at(0) == 0 and plan.step_at(59.9) == 5 and plan.step_at(60) is None
    with pytest.raises(ValueError, match="below start"):
        SweepPlan("users", 10, 1, 1, 5)


def run(
    tmp_path: Path,
    emulator: dict[str, Any],
    workload: dict[str, Any],
    *args: str,
    locustfile: str = "locustfiles/messages.py",
    timeout: float = 180,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    (tmp_path / "emulator.yaml").write_text(yaml.safe_dump(emulator))
    (tmp_path / "workload.yaml").write_text(yaml.safe_dump(workload))
    return run_locust(
        tmp_path, "--workload", str(tmp_path / "workload.yaml"),
        "--emulator-config", str(tmp_path / "emulator.yaml"), *args,
        locustfile=locustfile, timeout=timeout,
    )  # fmt: skip


# A haiku that serves 2 requests at once, each in ~0.2 s: about 10 requests/s at most.
SLOW = {
    "models": {
        "claude-haiku-4-5": {
            "ttft_base_ms": 100, "decode_tokens_per_s": 200, "ttft_jitter": 0, "decode_jitter": 0,
            "max_concurrent_streams": 2, "max_queue": 100000,
        }
    },
    "output_tokens": {"kind": "fixed", "value": 20},
    "rate_limits": {"haiku": {"requests_per_minute": None, "input_tokens_per_minute": None,
                              "output_tokens_per_minute": None}},
}  # fmt: skip
HAIKU = {
    "name": "haiku",
    "models": [{"model": "claude-haiku-4-5"}],
    "prompt_tokens": {"kind": "fixed", "value": 100},
    "max_tokens": {"kind": "fixed", "value": 20},
}


@pytest.mark.slow
@pytest.mark.timing
def test_open_loop_shows_lateness_a_closed_loop_hides(tmp_path: Path) -> None:
    open_result, open_data = run(
        tmp_path, SLOW, HAIKU, "-u", "4", "-r", "4", "-t", "14s", "--arrival-rate", "20",
        "--max-in-flight", "40", "--report", str(tmp_path / "open.html"),
    )  # fmt: skip
    assert open_result.returncode == 0, open_result.stderr[-2000:]
    assert open_data is not None
    schedule = open_data["open_loop"]
    # Twice the capacity offered: starts hit the in-flight cap and went out late, counted.
    assert schedule["late"] > 20 and schedule["cap_waits"] > 0
    # ~280 starts were due in 14 s at 20/s: those never made are counted too
    assert schedule["scheduled"] + schedule.get("not_started", 0) == pytest.approx(280, rel=0.25)
    assert schedule.get("not_started", 0) > 0
    windows = [w for w in open_data["over_time"] if w["schedule_ttft_ms_p50"] is not None]
    assert len(windows) >= 2
    assert windows[-1]["schedule_ttft_ms_p50"] > 1.3 * windows[0]["schedule_ttft_ms_p50"]
    assert open_data["total"]["queue_ms"]["p99"] > 500  # starts waited behind the cap
    closed_result, closed_data = run(tmp_path, SLOW, HAIKU, "-u", "2", "-r", "2", "-t", "4s")
    assert closed_result.returncode == 0 and closed_data is not None
    # The same server seen by 2 closed-loop users looks healthy: nothing is ever late.
    assert "open_loop" not in closed_data
    closed_ttft = closed_data["total"]["schedule_ttft_ms"]
    assert closed_ttft["p50"] < 150 < open_data["total"]["schedule_ttft_ms"]["p50"] / 10


@pytest.mark.slow
@pytest.mark.timing
def test_sweep_finds_the_capacity_of_the_emulator(tmp_path: Path) -> None:
    emulator = json.loads(json.dumps(SLOW))
    emulator["models"]["claude-haiku-4-5"].update(
        {"max_concurrent_streams": 4, "decode_tokens_per_s": 400}
    )
    emulator["output_tokens"] = {"kind": "fixed", "value": 40}
    workload = {**HAIKU, "max_tokens": {"kind": "fixed", "value": 40}}
    # capacity model: 4 streams / (0.1 s + 39 tokens / 400 tokens/s) = 20.3 requests/s
    implied = 4 / (0.1 + 0.0015 + 39 / 400)
    # Above it the queue grows by (offered - 20.3)/s: in a 5 s step 22 req/s leaves ~0.4 s of
    # wait (the SLO breaks), 25 req/s ~1.2 s (broken by 2x: the sweep stops there).
    result, data = run(
        tmp_path, emulator, workload, "-u", "4", "-r", "4", "--sweep", "rate",
        "--sweep-start", "16", "--sweep-step", "3", "--sweep-stop", "34",
        "--sweep-step-duration", "5", "--slo", "schedule_ttft_p95_ms<=400",
        # evenly spaced arrivals: Poisson bursts in 5 s steps could break the SLO a step or
        # two below the knee by chance (seen once: 16 found against 20.3 implied)
        "--arrival", "constant",
        "--report", str(tmp_path / "sweep.html"), locustfile="locustfiles/sweep.py",
    )  # fmt: skip
    assert data is not None, result.stderr[-3000:]
    sweep = data["sweep"]
    assert sweep["capacity"] == pytest.approx(implied, rel=0.2), sweep["steps"]
    assert sweep["capacity_by_group"]["claude-haiku-4-5 standard"] == sweep["capacity"]
    # It stopped early once the SLO was clearly broken, before the last step (34).
    assert len(sweep["steps"]) < 7
    rows = {row["offered"]: row for row in sweep["steps"]}
    assert rows[16]["met_slos"] and not rows[max(rows)]["met_slos"]
    assert rows[16]["holds_load"] and rows[16]["met"]
    # a knee was found (the SLO broke above the capacity): the capacity is no lower bound
    assert sweep["knee_found"] and sweep["capacity_lower_bound"] is None
    assert sweep["knee"]["offered"] > sweep["capacity"]
    output = result.stdout + result.stderr  # the console output is moving to stderr
    assert f"capacity: {sweep['capacity']:g} req/s offered (knee at" in output
    html = (tmp_path / "sweep.html").read_text()
    assert "schedule_ttft_p95_ms by offered load" in html
    assert f">capacity {sweep['capacity']:g}<" in html


@pytest.mark.slow
@pytest.mark.timing
def test_sweep_top_step_the_target_cannot_sustain_is_no_capacity(tmp_path: Path) -> None:
    """Issue #10 item 7: the top step's starts went out on time, the target answered far fewer
    (2 streams, ~0.2 s each: ~10 req/s) and no SLO broke; that step is not the capacity."""
    result, data = run(
        tmp_path, SLOW, HAIKU, "-u", "1", "-r", "1", "--sweep", "rate",
        "--sweep-start", "6", "--sweep-step", "14", "--sweep-stop", "20",
        "--sweep-step-duration", "5", "--arrival", "constant", "--slo", "ttft_p95_ms<=60000",
        "--report", str(tmp_path / "sweep.html"), locustfile="locustfiles/sweep.py", timeout=90,
    )  # fmt: skip
    assert data is not None, result.stderr[-3000:]
    sweep = data["sweep"]
    # Both steps analysed, the last one too: that needs the sweep shape's clock to start with
    # the sweep's (capacity.prepare_master), else the run ends before the last step does.
    assert [row["offered"] for row in sweep["steps"]] == [6, 20], sweep["steps"]
    low, top = sweep["steps"]
    assert low["met"] and low["holds_load"]
    assert top["met_slos"]  # no SLO broke...
    assert top["achieved_requests_per_s"] < 0.9 * 20  # ...but the target fell behind
    assert not top["holds_load"] and not top["met"] and top["fell_behind"] == "target"
    assert top["late_start_share"] < 0.1  # the starts went out on schedule
    assert top["cut"] > top["cut_excused"]  # requests piled up and were cut by the end
    assert sweep["capacity"] == 6 and sweep["knee_found"]
    assert sweep["knee"]["offered"] == 20 and "the target fell behind" in sweep["knee"]["reason"]
    output = result.stdout + result.stderr
    assert "NOT HELD (target)" in output and "step 1: the target fell behind" in output
    assert "capacity: 6 req/s offered (knee at 20 req/s offered" in output
    assert ">capacity 6<" in (tmp_path / "sweep.html").read_text()


@pytest.mark.slow
def test_slo_gate_passes_and_breaches_with_exit_codes_and_junit(tmp_path: Path) -> None:
    quick = {**SLOW, "models": {"claude-haiku-4-5": {"ttft_base_ms": 50, "ttft_jitter": 0}}}
    junit = tmp_path / "slo.xml"
    result, data = run(
        tmp_path, quick, HAIKU, "-u", "3", "-r", "3", "-t", "3s", "--junit", str(junit),
        "--slo", "ttft_p95_ms<=5000", "--slo", "error_rate<=0.5; otps_p50>=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert data is not None and data["slos"]["passed"] and data["slos"]["goodput_per_s"] > 0
    xml = junit.read_text()
    assert xml.count("<testcase") == 3 and "<failure" not in xml
    result, data = run(
        tmp_path, quick, HAIKU, "-u", "3", "-r", "3", "-t", "3s", "--junit", str(junit),
        "--slo", "ttft_p50_ms<=1", "--slo", "error_rate<=0.5",
    )  # fmt: skip
    assert result.returncode == 4
    assert "FAIL ttft_p50_ms<=1: measured" in result.stderr
    assert data is not None and not data["slos"]["passed"] and data["slos"]["good_requests"] == 0
    xml = junit.read_text()
    assert xml.count("<testcase") == 2 and xml.count("<failure") == 1
    assert 'name="ttft_p50_ms&lt;=1"' in xml and "measured" in xml
    result, _ = run(tmp_path, quick, HAIKU, "-u", "1", "-t", "30s", "--slo", "ttft_p95<=5")
    assert result.returncode == 2 and "write ttft_pNN_ms" in result.stderr


@pytest.mark.slow
def test_cost_guard_stops_within_one_request_of_the_cap(tmp_path: Path) -> None:
    priced = {**HAIKU, "prompt_tokens": {"kind": "fixed", "value": 2000}}
    emulator = {**SLOW, "models": {"claude-haiku-4-5": {"ttft_base_ms": 50, "ttft_jitter": 0}}}
    # one request: ~2,000 input tokens at $1/MTok + 20 output tokens at $5/MTok
    one_request = (2000 * 1.0 + 20 * 5.0) / 1e6
    cap = 0.03
    started = time.monotonic()
    result, data = run(
        tmp_path, emulator, priced, "-u", "3", "-r", "3", "-t", "60s", "--max-cost-usd", str(cap)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 45  # stopped by the guard, not by -t
    assert data is not None and data["cost_guard"]["stopped"]
    spent = data["total"]["cost_usd"]
    assert cap - 1.5 * one_request <= spent <= cap
    assert "cost guard" in result.stderr


def test_remote_target_needs_a_cost_cap(tmp_path: Path) -> None:
    result, data = run(
        tmp_path, SLOW, HAIKU, "-u", "1", "-t", "30s", "--target-url", "https://api.example.invalid"
    )
    assert result.returncode == 2 and "--max-cost-usd" in result.stderr and data is None
