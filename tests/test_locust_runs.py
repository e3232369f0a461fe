"""Real Locust runs (standalone and master + workers) against real emulator processes."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from loadkit.emulator.launcher import EmulatorProcess

from .runs import run_locust, settled_emulator

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "messages.py"
QUICK = {"ttft_base_ms": 60, "decode_tokens_per_s": 300, "ttft_jitter": 0.1, "decode_jitter": 0.1}
QUICK_EMULATOR: dict[str, Any] = {
    "models": {m: QUICK for m in ("claude-haiku-4-5", "claude-opus-4-6")},
    "output_tokens": {"kind": "uniform", "min": 10, "max": 60},
}


def locust(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    return run_locust(tmp_path, *args, env=env, timeout=timeout)


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["lean", "httpx"])
def test_standalone_run_accounts_for_every_request(tmp_path: Path, stack: str) -> None:
    config = write_yaml(tmp_path / "emulator.yaml", QUICK_EMULATOR)
    started = time.monotonic()
    result, data = locust(
        tmp_path, "-u", "20", "-r", "20", "-t", "6s", "--workload", "workloads/ci.yaml",
        "--emulator-config", str(config), "--csv", str(tmp_path / "run"), "--http-stack", stack,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    total = data["total"]
    # Every request is accounted for, and the emulator agrees attempt by attempt.
    assert data["accounting"]["mismatches"] == []
    accounting = data["accounting"]
    assert accounting["emulator_received"] == accounting["harness_sent"]
    # A request interrupted before it was fully written never reached the server.
    started = total["requests"] + total["cancelled"]
    assert started == total["attempts"] >= accounting["harness_sent"]
    assert started - accounting["harness_sent"] <= total["cancelled"]
    assert started == sum(total["outcomes"].values()) and total["requests"] > 50
    assert set(total["outcomes"]) <= {"ok", "cancelled"}
    # -t is honoured (not cut short by a stale loop clock after the imports).
    assert 5.9 <= data["duration_s"] <= 7.5 and elapsed >= 6
    # Locust's own tables hold the same requests, one entry each, named <model> <speed>:
    # the ones that ended (cancellations at the end are not Locust failures).
    with open(tmp_path / "run_stats.csv") as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    aggregated = rows.pop(("", "Aggregated"))
    assert {kind for kind, _ in rows} == {"LLM"}
    groups = {f"{g['model']} {g['speed']}": g for g in data["groups"]}
    assert {name for _, name in rows} == set(groups)
    for (_, name), row in rows.items():
        assert int(row["Request Count"]) == groups[name]["requests"]
        assert int(row["Failure Count"]) == groups[name]["failures"] == 0
    assert int(aggregated["Request Count"]) == total["requests"]
    assert "loadkit summary" in result.stderr and "accounting: all" in result.stderr


@pytest.mark.slow
def test_locust_views_equal_loadkits_and_stdout_stays_json(tmp_path: Path) -> None:
    """One Locust entry per request (response time E2E, length output tokens), failures
    included; Locust's counts, failure ratio and requests/s equal loadkit's; stdout holds
    only Locust's ``--json`` output."""
    config = write_yaml(
        tmp_path / "emulator.yaml",
        {**QUICK_EMULATOR, "faults": {"midstream_error_rate": 0.2}},
    )
    result, data = locust(
        tmp_path, "-u", "10", "-r", "10", "-t", "5s", "--stop-timeout", "10s", "--json",
        "--csv", str(tmp_path / "run"), "--workload", "workloads/ci.yaml",
        "--emulator-config", str(config),
    )  # fmt: skip
    assert data is not None, result.stderr[-3000:]
    stats = json.loads(result.stdout)  # nothing but Locust's JSON on stdout
    assert "loadkit summary" in result.stderr
    total = data["total"]
    entries = {entry["name"]: entry for entry in stats}
    groups = {f"{g['model']} {g['speed']}": g for g in data["groups"]}
    assert set(entries) == set(groups) and {e["method"] for e in stats} == {"LLM"}
    for name, entry in entries.items():
        group = groups[name]
        assert entry["num_requests"] == group["requests"] > 0
        assert entry["num_failures"] == group["failures"]
        assert entry["total_content_length"] == group["output_tokens"]
    assert total["failures"] > 0 and total["cancelled"] == 0  # --stop-timeout: none cut
    assert sum(e["num_requests"] for e in stats) == total["requests"]
    assert sum(e["num_failures"] for e in stats) / total["requests"] == pytest.approx(
        total["failure_ratio"], abs=1e-6
    )
    # Locust's requests/s spans the run's start to its last request; loadkit's to the run's
    # stop, which --stop-timeout makes the moment the last stream ended (give or take).
    with open(tmp_path / "run_stats.csv") as handle:
        aggregated = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    assert int(aggregated["Request Count"]) == total["requests"]
    assert float(aggregated["Requests/s"]) == pytest.approx(total["requests_per_s"], rel=0.03)
    # Failures are Locust failures with their outcome; Locust's exit code says so.
    assert result.returncode == 1


@pytest.mark.slow
@pytest.mark.timing
def test_distributed_run_merges_counts_and_sketches(tmp_path: Path) -> None:
    with EmulatorProcess(config=QUICK_EMULATOR, seed=11) as emulator:
        result, data = locust(
            tmp_path, "-u", "24", "-r", "24", "-t", "6s", "--processes", "2",
            "--workload", "workloads/ci.yaml", "--target-url", emulator.base_url,
            env={"ANTHROPIC_API_KEY": "test-key"},
        )  # fmt: skip
        stats, served = settled_emulator(emulator.base_url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    totals = stats["totals"]
    total = data["total"]
    # Both workers' requests reached the master: the counts equal the server's.
    assert data["accounting"]["mismatches"] == []
    assert data["accounting"]["emulator_received"] == totals["received"]
    assert data["accounting"]["harness_sent"] == totals["received"] > 50
    assert total["outcomes"].get("ok", 0) <= totals["completed"]
    assert total["requests"] + total["cancelled"] == sum(total["outcomes"].values())
    # Percentiles come from merged sketches: they match the server's ground truth.
    for group in data["groups"]:
        truth = [
            s["actual_ttft_ms"]
            for s in served
            if s["model"] == group["model"] and s["speed"] == group["speed"] and s["actual_ttft_ms"]
        ]
        assert group["ttft_ms"]["p50"] == pytest.approx(statistics.median(truth), rel=0.02, abs=2)
        decode = [
            s["decode_tokens_per_s"]
            for s in served
            if s["model"] == group["model"] and s["speed"] == group["speed"]
            and s["outcome"] == "completed"
        ]  # fmt: skip
        assert group["otps"]["p50"] == pytest.approx(statistics.median(decode), rel=0.05)


@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.parametrize("speed", ["standard", "fast"])
def test_ttft_and_otps_accuracy_through_locust(tmp_path: Path, speed: str) -> None:
    fixed = {"ttft_base_ms": 100, "decode_tokens_per_s": 50, "ttft_jitter": 0, "decode_jitter": 0}
    fixed |= {"fast_decode_multiplier": 2.5, "fast_decode_spread": 0.0}  # a constant speed-up
    emulator_config = {
        "models": {"claude-opus-4-6": fixed},
        "output_tokens": {"kind": "fixed", "value": 40},
    }
    workload = write_yaml(
        tmp_path / "w.yaml",
        {
            "name": "accuracy",
            "models": [{"model": "claude-opus-4-6", "speeds": {speed: 1}}],
            "prompt_tokens": {"kind": "fixed", "value": 200},
            "max_tokens": {"kind": "fixed", "value": 100},
        },
    )
    with EmulatorProcess(config=emulator_config, seed=3) as emulator:
        result, data = locust(
            tmp_path, "-u", "8", "-r", "8", "-t", "6s", "--workload", str(workload),
            "--target-url", emulator.base_url, env={"ANTHROPIC_API_KEY": "test-key"},
        )  # fmt: skip
        served = httpx2.get(f"{emulator.base_url}/_emulator/served").json()
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None
    (group,) = data["groups"]
    truth = statistics.median(s["actual_ttft_ms"] for s in served if s["actual_ttft_ms"])
    assert abs(group["ttft_ms"]["p50"] - truth) <= 2.0, (group["ttft_ms"], truth)
    decode = 50 * (2.5 if speed == "fast" else 1)
    assert group["otps"]["p50"] == pytest.approx(decode, rel=0.02)


def test_bad_workload_stops_before_any_request(tmp_path: Path) -> None:
    workload = write_yaml(
        tmp_path / "bad.yaml", {"models": [{"model": "claude-sonnet-4-6", "speeds": {"fast": 1}}]}
    )
    result, data = locust(tmp_path, "-u", "2", "-t", "30s", "--workload", str(workload), timeout=60)
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "does not support fast mode" in result.stderr
    assert data is None


@pytest.mark.slow
def test_external_target_needs_a_key_from_the_environment(tmp_path: Path) -> None:
    """A target that is not a loadkit emulator gets the key from the environment only."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/")
        result, _ = locust(
            tmp_path, "-u", "2", "-t", "20s", "--workload", "workloads/ci.yaml",
            "--target-url", f"http://127.0.0.1:{port}", timeout=60,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY is not set" in result.stderr


@pytest.mark.slow
def test_an_emulator_target_gets_a_placeholder_key_never_the_real_one(tmp_path: Path) -> None:
    """A loadkit emulator needs no key: it gets a placeholder, even when a real key is set,
    and needs no spending cap wherever it runs."""
    # 127.0.0.2: loopback, but not a name the cost guard takes for free
    with EmulatorProcess(config=QUICK_EMULATOR, host="127.0.0.2") as emulator:
        result, data = locust(
            tmp_path, "-u", "2", "-t", "3s", "--workload", "workloads/ci.yaml",
            "--target-url", emulator.base_url,
            env={"ANTHROPIC_API_KEY": "sk-ant-real-key-never-sent"}, timeout=60,
        )  # fmt: skip
        seen = httpx2.get(f"{emulator.base_url}/_emulator/stats").json()["totals"]["received"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None and data["total"]["requests"] > 0 and seen > 0
    assert "sk-ant-real-key-never-sent" not in result.stdout + result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
def test_the_stop_does_not_hold_the_hub_while_streams_are_in_flight(tmp_path: Path) -> None:
    """Locust's ``Runner.stop()`` calls ``inspect.stack()`` for a debug line; cold, that call
    held the hub ~200 ms right at the stop, so the streams in flight got their last tokens in
    one burst (inter-token gaps of 100-170 ms where 20 ms was the pace) and the requests ending
    then were timed wrong. gevent's own monitor reports any greenlet that keeps the hub over
    100 ms: none may be Locust's stop."""
    result, data = locust(
        tmp_path, "--workload", "workloads/ci.yaml", "-u", "30", "-r", "30", "-t", "3s",
        env={"GEVENT_MONITOR_THREAD_ENABLE": "true", "GEVENT_MAX_BLOCKING_TIME": "0.1"},
    )  # fmt: skip
    assert result.returncode == 0 and data is not None, result.stderr[-3000:]
    assert data["total"]["cancelled"] > 0  # streams were in flight at the stop
    reports = result.stderr.split("appears to be blocked")[1:]
    at_stop = [r for r in reports if "in stop\n" in r[:4000]]
    assert not at_stop, at_stop[0][:3000]
