"""Round trip of ``loadkit calibrate`` (issue #13, part 3): a run against emulator config A,
a config B calibrated from that run's records, and a second run against B that reproduces
A's TTFT p50/p90 and OTPS p50 per model x speed within 5%, and its limits exactly.

The emulator's model (docs/emulator-config.yaml): TTFT = (ttft_base_ms + prefill tokens /
prefill_tokens_per_s) x a mean-1 log-normal factor; decode at decode_tokens_per_s x such a
factor, x fast_decode_multiplier for speed "fast". The limits are the API's, as its Rate
limits page (platform.claude.com/docs/en/api/rate-limits, "Response headers") states them:
``anthropic-ratelimit-{requests,input-tokens,output-tokens}-limit`` per model class, and fast
mode's own ``anthropic-fast-{input,output}-tokens-limit`` (the fast-mode page, "Rate limits").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.emulator.config import load_config
from loadkit.emulator.launcher import EmulatorProcess

from .runs import ROOT, run_locust

# Config A: unusual values, far from every default.
CONFIG_A: dict[str, Any] = {
    "models": {
        "claude-opus-4-6": {
            "ttft_base_ms": 333,
            "prefill_tokens_per_s": 12_345,
            "decode_tokens_per_s": 77,
            "fast_decode_multiplier": 2.1,
            "fast_decode_spread": 0.05,
            "ttft_jitter": 0.03,
            "decode_jitter": 0.03,
        },
        "claude-haiku-4-5": {
            "ttft_base_ms": 222,
            "prefill_tokens_per_s": 23_456,
            "decode_tokens_per_s": 111,
            "ttft_jitter": 0.03,
            "decode_jitter": 0.03,
        },
    },
    # Small, odd limits that a few seconds of this workload do not reach (no 429 changes a
    # latency): buckets start full and refill at limit/60 per second.
    "rate_limits": {
        "opus": {
            "requests_per_minute": 3333,
            "input_tokens_per_minute": 2_345_678,
            "output_tokens_per_minute": 234_567,
        },
        "haiku": {
            "requests_per_minute": 2222,
            "input_tokens_per_minute": 1_876_543,
            "output_tokens_per_minute": 123_456,
        },
    },
    "fast_mode": {"input_tokens_per_minute": 1_357_913, "output_tokens_per_minute": 45_678},
    "output_tokens": {"kind": "fixed", "value": 4096},  # every reply runs to max_tokens
}
WORKLOAD: dict[str, Any] = {
    "name": "calibration-probe",
    "models": [
        {"model": "claude-opus-4-6", "weight": 2, "speeds": {"standard": 1, "fast": 1}},
        {"model": "claude-haiku-4-5", "weight": 1},
    ],
    # Three prompt sizes, far apart: enough to fit the prefill rate, and each TTFT
    # percentile compared lies inside one size's cluster (p50 mid-cluster 2, p90 at 70% of
    # cluster 3), where it is steady from run to run.
    "prompt_tokens": {
        "kind": "buckets",
        "buckets": [{"value": v, "weight": 1} for v in (300, 2500, 5000)],
    },
    "max_tokens": {"kind": "fixed", "value": 40},
}
GROUPS = [
    ("claude-opus-4-6", "standard"),
    ("claude-opus-4-6", "fast"),
    ("claude-haiku-4-5", "standard"),
]


def _run(folder: Path, config: Path, name: str) -> dict[str, Any]:
    emulator = EmulatorProcess(config_path=config, seed=11)
    url = emulator.start()
    try:
        result, summary = run_locust(
            folder,
            "--target-url", url, "--workload", str(folder / "workload.yaml"),
            "--workload-seed", "7", "-u", "60", "-r", "60", "-t", "6s", "--stop-timeout", "3",
            "--records", str(folder / f"{name}.jsonl"),
            summary=f"{name}.json",
        )  # fmt: skip
    finally:
        emulator.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary is not None
    lines = (folder / f"{name}.jsonl").read_text().splitlines()
    total = summary["total"]
    assert len(lines) == total["requests"] + total["cancelled"]  # every request, one line
    assert f"records: {len(lines)} written to {folder / name}.jsonl, 0 dropped" in result.stderr
    return summary


def _figures(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    found = {}
    for group in summary["groups"]:
        found[(group["model"], group["speed"])] = {
            "ttft_p50": group["ttft_ms"]["p50"],
            "ttft_p90": group["ttft_ms"]["p90"],
            "otps_p50": group["otps"]["p50"],
            "requests": group["requests"],
            "rate_limited": group["rate_limited"],
        }
    return found


@pytest.mark.slow
@pytest.mark.timing
def test_calibrated_config_reproduces_the_run_it_was_fitted_to(tmp_path: Path) -> None:
    config_a = tmp_path / "a.yaml"
    config_a.write_text(yaml.safe_dump(CONFIG_A))
    (tmp_path / "workload.yaml").write_text(yaml.safe_dump(WORKLOAD))
    first = _figures(_run(tmp_path, config_a, "run-a"))

    config_b = tmp_path / "b.yaml"
    calibrated = subprocess.run(
        [sys.executable, "-m", "loadkit", "calibrate", str(tmp_path / "run-a.jsonl"),
         "-o", str(config_b), "--report-json", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert calibrated.returncode == 0, calibrated.stderr
    print(calibrated.stdout)
    second = _figures(_run(tmp_path, config_b, "run-b"))

    for group in GROUPS:
        a, b = first[group], second[group]
        print(group, {k: (a[k], b[k], f"{b[k] / a[k] - 1:+.2%}") for k in a if a[k]})
        assert a["rate_limited"] == b["rate_limited"] == 0
        assert a["requests"] >= 80 and b["requests"] >= 80, (a, b)
        for figure in ("ttft_p50", "ttft_p90", "otps_p50"):
            assert abs(b[figure] / a[figure] - 1) < 0.05, (group, figure, a[figure], b[figure])

    a_config, b_config = load_config(config_a), load_config(config_b)
    assert b_config.rate_limits["opus"] == a_config.rate_limits["opus"]
    assert b_config.rate_limits["haiku"] == a_config.rate_limits["haiku"]
    assert b_config.fast_mode == a_config.fast_mode
    # the parameters themselves, within what the fit says of its own accuracy
    opus, haiku = b_config.models["claude-opus-4-6"], b_config.models["claude-haiku-4-5"]
    assert opus.fast_decode_multiplier == pytest.approx(2.1, rel=0.05)
    # the speed-up's spread, from a difference of variances, within 4 of its standard errors
    report = json.loads((tmp_path / "report.json").read_text())
    (opus_fit,) = [m for m in report["models"] if m["model"] == "claude-opus-4-6"]
    spread = opus_fit["fast_spread"]
    assert abs(spread["value"] - 0.05) <= 4 * spread["stderr"], spread
    assert opus.fast_decode_spread == pytest.approx(spread["value"], rel=1e-4)
    assert opus.decode_tokens_per_s == pytest.approx(77, rel=0.05)
    assert haiku.decode_tokens_per_s == pytest.approx(111, rel=0.05)
    assert opus.ttft_base_ms == pytest.approx(333, rel=0.1)
    assert opus.prefill_tokens_per_s == pytest.approx(12_345, rel=0.15)
    assert haiku.prefill_tokens_per_s == pytest.approx(23_456, rel=0.15)
