"""The Locust layer's per-run state: one ``Run`` per environment, the ``RunPlan`` the master
sends its workers, and a refused start on a master with workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from loadkit.locust_plugin.run import PLAN_KEY, RunPlan, run_of

from .runs import own_master_port

ROOT = Path(__file__).resolve().parent.parent


def plan() -> RunPlan:
    return RunPlan(
        run_id="20261130-000000-abcdef",
        target="http://127.0.0.1:8000",
        key_kind="emulator",
        embedded_url="http://127.0.0.1:8000",
        workload={"name": "w", "models": [{"model": "claude-haiku-4-5"}]},
        workload_slos=("ttft_p95_ms<=1000",),
        run_start=1.5,
        sweep_start=1.5,
        cost_cap_per_process=0.0,
        users_total=4,
    )


def test_the_plan_travels_under_one_key_and_comes_back_equal() -> None:
    master = SimpleNamespace()
    plan().to_options(master)
    # Locust sends parsed_options to its workers as msgpack: tuples arrive as lists
    worker = SimpleNamespace(**json.loads(json.dumps(vars(master))))
    assert list(vars(worker)) == [PLAN_KEY]
    assert RunPlan.from_options(worker) == plan()


def test_no_plan_is_a_refused_start_and_a_foreign_one_is_named() -> None:
    assert RunPlan.from_options(SimpleNamespace()) is None
    assert RunPlan.from_options(SimpleNamespace(**{PLAN_KEY: None})) is None
    other = SimpleNamespace(**{PLAN_KEY: {"run_id": "x", "target": "y"}})
    with pytest.raises(ValueError, match="same loadkit version"):
        RunPlan.from_options(other)


def test_each_environment_has_its_own_run() -> None:
    first, second = SimpleNamespace(), SimpleNamespace()
    assert run_of(first) is run_of(first)
    assert run_of(first) is not run_of(second)
    run_of(first).run_id = "a"
    assert run_of(second).run_id == "" and run_of(first).environment is first


@pytest.mark.slow
def test_a_start_the_master_refuses_is_clean_on_its_workers(tmp_path: Path) -> None:
    """Issue #12: with ``--processes 2`` a refused start (a remote target without a spending
    cap) printed ``AttributeError: 'Namespace' object has no attribute 'loadkit_run_id'`` on
    each worker. The master says why once; the workers, sent no plan, send nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = "test-key"
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "locustfiles/messages.py", "--headless",
         "--processes", "2", "-u", "2", "-r", "2", "-t", "20s", "--only-summary",
         "--workload", "workloads/ci.yaml", "--target-url", "https://api.example.invalid",
         "--allowed-targets", "https://api.example.invalid", *own_master_port(["--processes"])],
        capture_output=True, text=True, timeout=90, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("give --max-cost-usd") == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "AttributeError" not in result.stderr
