"""The results schema and ``loadkit compare``: real runs written, read back and judged."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.compare import CompareError, change, parse_gate
from loadkit.results import ResultsError, RunSummary, json_schema, load_summary
from loadkit.sketch import Sketch

from .test_locust_runs import locust

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "metric", "op", "limit", "relative", "group"),
    [
        ("ttft_p95_ms>+10%", "ttft_p95_ms", ">", 0.10, True, "all"),
        ("otps_p50<-5%", "otps_p50", "<", -0.05, True, "all"),
        ("error_rate>=0.01", "error_rate", ">=", 0.01, False, "all"),
        ("model=claude-opus-4-6,speed=fast:e2e_p99_ms>+20%", "e2e_p99_ms", ">", 0.2, True,
         "claude-opus-4-6 fast"),
        ("model=claude-haiku-4-5: rate_429 > 0.05", "rate_429", ">", 0.05, False,
         "claude-haiku-4-5 standard"),
    ],
)  # fmt: skip
def test_gate_expressions(
    text: str, metric: str, op: str, limit: float, relative: bool, group: str
) -> None:
    gate = parse_gate(text)
    assert (gate.metric.name, gate.op, gate.relative, gate.group_name) == (
        metric, op, relative, group,
    )  # fmt: skip
    assert gate.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p95>+10%", "unknown metric 'ttft_p95'"),
        ("ttft_p95_ms=+10%", "expected"),
        ("ttft_p95_ms>+ten%", "expected"),
        ("speed=fast:ttft_p95_ms>+10%", "the scope is model=NAME"),
        ("region=eu,model=x:ttft_p95_ms>+10%", "the scope is model=NAME"),
    ],
)
def test_bad_gates_are_named(text: str, message: str) -> None:
    with pytest.raises(CompareError, match=message):
        parse_gate(text)


def test_change_is_relative_to_the_base_and_zero_to_zero_is_none() -> None:
    assert change(100.0, 110.0, relative=True) == pytest.approx(0.10)
    assert change(0.0, 0.0, relative=True) == 0.0
    assert change(0.0, 0.02, relative=True) == math.inf
    assert change(0.01, 0.03, relative=False) == pytest.approx(0.02)
    assert change(None, 1.0, relative=True) is None


def test_sketch_wire_round_trip_merges_like_one_process() -> None:
    """Workers send their sketches to the master over the wire: the merged percentiles must
    equal one process's within the sketch's relative accuracy (1%)."""
    rng = random.Random(4)
    values = [rng.lognormvariate(6, 0.8) for _ in range(30_000)]
    whole = Sketch()
    merged = Sketch()
    for part in range(3):
        sketch = Sketch()
        for value in values[part::3]:
            sketch.add(value)
            whole.add(value)
        wire = json.loads(json.dumps(sketch.to_wire()))  # as the master receives it
        merged.merge(Sketch.from_wire(wire))
    assert merged.count == whole.count == len(values)
    ordered = sorted(values)
    for q in (0.1, 0.5, 0.9, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert merged.quantile(q) == pytest.approx(whole.quantile(q), rel=1e-9)
        assert merged.quantile(q) == pytest.approx(exact, rel=0.02)


def test_the_published_schema_is_the_current_one() -> None:
    published = json.loads((ROOT / "docs/results-schema.json").read_text())
    assert published == json_schema(), "run: loadkit schema > docs/results-schema.json"


def _compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadkit.cli", "compare", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def _run(tmp_path: Path, name: str, ttft_ms: int) -> Path:
    emulator = {
        "models": {
            "claude-haiku-4-5": {"ttft_base_ms": ttft_ms, "ttft_jitter": 0, "decode_jitter": 0}
        },
        "output_tokens": {"kind": "fixed", "value": 20},
    }
    workload: dict[str, Any] = {
        "name": "compare",
        "models": [{"model": "claude-haiku-4-5"}],
        "prompt_tokens": {"kind": "fixed", "value": 100},
        "max_tokens": {"kind": "fixed", "value": 20},
    }
    folder = tmp_path / name
    folder.mkdir()
    (folder / "emulator.yaml").write_text(yaml.safe_dump(emulator))
    (folder / "workload.yaml").write_text(yaml.safe_dump(workload))
    result, data = locust(
        folder, "-u", "4", "-r", "4", "-t", "3s", "--workload", str(folder / "workload.yaml"),
        "--emulator-config", str(folder / "emulator.yaml"),
    )  # fmt: skip
    assert result.returncode == 0 and data is not None, result.stderr[-2000:]
    return folder / "summary.json"


@pytest.mark.slow
def test_compare_two_real_runs_fails_the_gate_on_a_slower_target(tmp_path: Path) -> None:
    base, slower = _run(tmp_path, "base", 50), _run(tmp_path, "slower", 200)
    written = load_summary(base)  # what --summary-json wrote fits the schema
    assert written.schema_version == 1 and written.meta.workload == "compare"
    assert written.meta.users == 4 and written.meta.arrival == "closed loop"
    assert written.meta.versions.locust and written.meta.target.startswith("http://127.0.0.1:")
    assert len(written.meta.workload_sha256) == 64
    assert written.meta.target_kind == "embedded emulator"

    result = _compare(str(base), str(slower), "--fail-if", "ttft_p95_ms>+10%",
                      "--fail-if", "error_rate>+0.01")  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "FAIL ttft_p95_ms>+10% [all]: changed +" in result.stdout
    assert "PASS error_rate>+0.01 [all]" in result.stdout
    assert "claude-haiku-4-5 standard" in result.stdout and "TTFT p95 ms" in result.stdout
    assert "1 of 2 gate(s) failed" in result.stderr
    # the other way round the TTFT fell: no gate fails
    assert _compare(str(slower), str(base), "--fail-if", "ttft_p95_ms>+10%").returncode == 0


def test_compare_names_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"run_id": "x", "groups": []}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [
        (tmp_path / "missing.json", "cannot read it"),
        (broken, "not JSON"),
        (old, "schema_version none; this loadkit reads version 1"),
    ]
    for path, message in cases:
        result = _compare(str(path), str(path))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        with pytest.raises(ResultsError, match=str(path.name)):
            load_summary(path)
    good.write_text(json.dumps({"schema_version": 1, "run_id": "x", "duration_s": "soon"}))
    with pytest.raises(ResultsError, match="duration_s"):
        load_summary(good)
    result = _compare(str(old), str(old), "--fail-if", "latency>+1%")
    assert result.returncode == 2 and "unknown metric 'latency'" in result.stderr


def test_a_summary_that_does_not_fit_the_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        RunSummary.model_validate({"schema_version": 2})


def test_results_that_do_not_fit_the_schema_are_still_written(tmp_path: Path) -> None:
    """A defect in the figures must not lose the run's results: they are written as they
    are, in strict JSON."""
    from loadkit.aggregate import Aggregate
    from loadkit.summary import unfitting_figures, write_unfitting

    data = unfitting_figures(Aggregate(), "run-1")
    data["total"]["infinite"] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        RunSummary.model_validate(data)
    write_unfitting(data, tmp_path / "s.json")
    written = json.loads((tmp_path / "s.json").read_text())  # strict JSON all the same
    assert written["run_id"] == "run-1" and written["total"]["infinite"] is None
