"""The InfluxDB sink with real servers: VictoriaMetrics (/api/v2/write) and InfluxDB 1.x."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .runs import own_master_port
from .servers import InfluxDB1, VictoriaMetrics

ROOT = Path(__file__).resolve().parent.parent
QUICK = {"ttft_base_ms": 60, "decode_tokens_per_s": 300, "ttft_jitter": 0.1, "decode_jitter": 0.1}
EMULATOR = {
    "models": {m: QUICK for m in ("claude-haiku-4-5", "claude-opus-4-6")},
    "output_tokens": {"kind": "uniform", "min": 10, "max": 60},
    "rate_limits": {"haiku": {"requests_per_minute": 600}},
}
TOKEN = "influx-token-must-not-leak-42"


@pytest.fixture()
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    yield server
    server.stop()


def locust_command(
    tmp_path: Path, url: str, *args: str, emulator: dict[str, Any] = EMULATOR
) -> tuple[list[str], dict[str, str]]:
    config = tmp_path / "emulator.yaml"
    config.write_text(yaml.safe_dump(emulator))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "INFLUXDB_"))}
    env.update({"INFLUXDB_V2_URL": url, "INFLUXDB_V2_TOKEN": TOKEN, "INFLUXDB_V2_ORG": "loadkit"})
    command = [
        sys.executable, "-m", "locust", "-f", "locustfiles/messages.py", "--headless",
        "--only-summary", "--workload", "workloads/ci.yaml", "--emulator-config", str(config),
        "--summary-json", str(tmp_path / "summary.json"), *args, *own_master_port(args),
    ]  # fmt: skip
    return command, env


def run_locust(tmp_path: Path, url: str, *args: str) -> tuple[str, dict[str, Any]]:
    command, env = locust_command(tmp_path, url, *args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    return output, json.loads((tmp_path / "summary.json").read_text())


def exported(
    victoria: VictoriaMetrics, field: str, run_id: str
) -> list[tuple[dict[str, str], float]]:
    points = []
    for series in victoria.export(f"llm_request_{field}", run_id=run_id):
        points.extend((series["metric"], value) for value in series["values"])
    return points


def check_points_equal_records(victoria: VictoriaMetrics, data: dict[str, Any]) -> None:
    run_id, total = data["run_id"], data["total"]
    # VictoriaMetrics makes freshly written rows searchable a moment later.
    deadline = time.monotonic() + 15
    attempts = exported(victoria, "attempts", run_id)
    # one point per request, those cancelled by the end of the run included
    points = total["requests"] + total["cancelled"]
    while len(attempts) < points and time.monotonic() < deadline:
        time.sleep(0.5)
        attempts = exported(victoria, "attempts", run_id)
    assert len(attempts) == points and total["requests"] > 20
    assert Counter(m["outcome"] for m, _ in attempts) == Counter(total["outcomes"])
    assert sum(v for _, v in attempts) == total["attempts"]
    output = exported(victoria, "output_tokens", run_id)
    assert sum(v for _, v in output) == total["output_tokens"]
    inputs = exported(victoria, "input_tokens", run_id)
    assert sum(v for _, v in inputs) == total["input_tokens"]
    cost = sum(v for _, v in exported(victoria, "cost_usd", run_id))
    assert cost == pytest.approx(total["cost_usd"], rel=1e-6)
    by_group = Counter((m["model"], m["speed"]) for m, _ in attempts)
    assert by_group == Counter(
        {(g["model"], g["speed"]): g["requests"] + g["cancelled"] for g in data["groups"]}
    )
    ttfts = sorted(v for _, v in exported(victoria, "ttft_ms", run_id))
    assert ttfts and ttfts[len(ttfts) // 2] == pytest.approx(total["ttft_ms"]["p50"], rel=0.05)
    assert data["influxdb"]["dropped"] == 0


@pytest.mark.slow
def test_standalone_run_writes_one_point_per_request(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    output, data = run_locust(tmp_path, victoria.url, "-u", "20", "-r", "20", "-t", "5s")
    check_points_equal_records(victoria, data)
    assert "InfluxDB sink on" in output and TOKEN not in output
    deadline = time.monotonic() + 10
    events: set[str] = set()
    while events < {"start", "users", "stop"} and time.monotonic() < deadline:
        time.sleep(0.2)  # the last points become searchable a moment later
        events = {
            s["metric"]["event"] for s in victoria.export("llm_run_users", run_id=data["run_id"])
        }
    assert events >= {"start", "users", "stop"}
    headroom = victoria.export(
        "llm_ratelimit_standard_requests_remaining", run_id=data["run_id"], model="claude-haiku-4-5"
    )
    assert headroom and all(v <= 600 for s in headroom for v in s["values"])


@pytest.mark.slow
def test_distributed_run_writes_from_every_worker(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    _, data = run_locust(
        tmp_path, victoria.url, "-u", "24", "-r", "24", "-t", "5s", "--processes", "2"
    )
    check_points_equal_records(victoria, data)
    workers = {m["worker"] for m, _ in exported(victoria, "attempts", data["run_id"])}
    assert len(workers) == 2


@pytest.mark.slow
def test_sink_off_says_so_once(tmp_path: Path) -> None:
    output, data = run_locust(tmp_path, "", "-u", "2", "-r", "2", "-t", "2s")
    assert output.count("InfluxDB sink off") == 1 and "influxdb" not in data


@pytest.mark.slow
def test_outage_of_fifteen_seconds_loses_nothing(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    unlimited = {**EMULATOR, "rate_limits": {}}
    command, env = locust_command(
        tmp_path, victoria.url, "-u", "10", "-r", "10", "-t", "26s", emulator=unlimited
    )
    with open(tmp_path / "locust.log", "w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
        time.sleep(5)
        victoria.stop()
        time.sleep(15)
        victoria.start()
        assert process.wait(timeout=120) == 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["influxdb"]["failed_writes"] > 0  # the outage was felt...
    check_points_equal_records(victoria, data)  # ...and nothing was lost
    assert TOKEN not in (tmp_path / "locust.log").read_text()


DASHBOARD = ROOT / "dashboards" / "grafana" / "dashboards" / "loadkit.json"


def grafana_to_influxql(query: str, run_id: str) -> str:
    return (
        query.replace("$timeFilter", "time > now() - 1h")
        .replace("$__interval", "1s")
        .replace("$run_id", re.escape(run_id))
        .replace("$model", ".*")
        .replace("$speed", ".*")
    )


def series_values(result: dict[str, Any]) -> list[dict[str, Any]]:
    (statement,) = result["results"]
    assert "error" not in statement, statement
    return statement.get("series", [])


def dashboard_run(
    tmp_path: Path, url: str, name: str, emulator: dict[str, Any], *args: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start a run writing its points to ``url`` and to a line file; (process, lines, summary)."""
    folder = tmp_path / name
    folder.mkdir()
    line_file = folder / "points.lp"
    command, env = locust_command(
        folder, url, *args, "--influxdb-line-file", str(line_file), emulator=emulator
    )
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, line_file, folder / "summary.json"


def dashboard_results(influx: InfluxDB1, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every panel's every query, on this run's points: 'title/refId' -> series."""
    dashboard = json.loads(DASHBOARD.read_text())
    results: dict[str, list[dict[str, Any]]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            query = grafana_to_influxql(target["query"], run_id)
            results[f"{panel['title']}/{target['refId']}"] = series_values(influx.query(query))
    for variable in dashboard["templating"]["list"]:
        values = series_values(influx.query(variable["query"]))
        assert values, variable["name"]
    annotation = dashboard["annotations"]["list"][0]["query"]
    assert series_values(influx.query(grafana_to_influxql(annotation, run_id)))
    return results


def column(
    results: dict[str, list[dict[str, Any]]], key: str, name: str, **tags: str
) -> list[float]:
    """A column's values over the series whose tags match ``tags``, in time order."""
    out = []
    for series in results[key]:
        if any(series.get("tags", {}).get(k) != v for k, v in tags.items()):
            continue
        index = series["columns"].index(name)
        out.extend(row[index] for row in series["values"] if row[index] is not None)
    return out


TTFT = "TTFT p50 / p95 / p99 by model x speed/A"
E2E = "E2E p50 / p95 / p99 by model x speed/A"
SCHEDULE_TTFT = "Schedule-relative TTFT p50 / p95 / p99 (from the intended start)/A"
QUEUE = "Start lateness (queue) p50 / p95 / p99: open loop/A"
LIMITED, FELL_BACK, RESPONSES_429 = (f"429s and fallbacks/{ref}" for ref in "ABC")
REALISTIC_PANELS = (
    "Output tokens / s by kind",
    "TTFT p50 / p95 by prompt dataset",
    "Output-length adherence",
)


def by_time(results: dict[str, list[dict[str, Any]]], key: str, name: str) -> dict[Any, float]:
    """(model, speed, time) -> value, for comparing two percentile panels bucket by bucket."""
    out = {}
    for series in results[key]:
        index = series["columns"].index(name)
        for row in series["values"]:
            if row[index] is not None:
                out[(series["tags"]["model"], series["tags"]["speed"], row[0])] = row[index]
    return out


@pytest.mark.slow
def test_every_dashboard_query_runs_on_influxdb_1(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """Two real runs at once: closed loop with a tight fast-mode limit and the standard
    fallback (429s, fallbacks, errors), and open loop with no limits (no 429 at all: the
    count panels must still give zeros, not nothing)."""
    tight = {
        **EMULATOR,
        "fast_mode": {"input_tokens_per_minute": 600},
        "rate_limits": {"haiku": {"requests_per_minute": 60}},
        # errors in every run (no policy re-issues a stream cut by an error event): the 429s
        # alone may all end well, and then "Errors by type" rightly has no series
        "faults": {"midstream_error_rate": 0.1},
    }
    limited_run = dashboard_run(
        tmp_path, victoria.url, "limited", tight, "-u", "12", "-r", "12", "-t", "6s",
        "--fallback", "standard",
    )  # fmt: skip
    open_run = dashboard_run(
        tmp_path, victoria.url, "open", {**EMULATOR, "rate_limits": {}}, "-u", "4", "-r", "4",
        "-t", "5s", "--arrival-rate", "30",
    )  # fmt: skip
    runs = []
    for process, line_file, summary in (limited_run, open_run):
        process.wait(timeout=180)
        runs.append((line_file.read_text(), json.loads(summary.read_text())))
    influx = InfluxDB1(tmp_path)
    influx.start()
    try:
        for lines, _ in runs:
            influx.write_lines(lines)
        (_, data), (_, open_data) = runs
        results = dashboard_results(influx, data["run_id"])
        open_results = dashboard_results(influx, open_data["run_id"])
    finally:
        influx.stop()
    total = data["total"]

    # (the panels of prompt datasets, content mode and output targets stay empty for ci.yaml;
    # tests/test_realistic_views.py runs them on a run that has them)
    filled = {k: v for k, v in results.items() if not k.startswith(REALISTIC_PANELS)}
    assert all(filled.values()), [k for k, v in filled.items() if not v]
    groups = {(s["tags"]["model"], s["tags"]["speed"]) for s in results[TTFT]}
    assert groups == {(g["model"], g["speed"]) for g in data["groups"] if g["ttft_ms"]["p50"]}
    p50s = column(results, TTFT, "p50")
    assert min(p50s) > 50 and max(p50s) < 5000
    e2e = by_time(results, E2E, "p50")
    assert {key[:2] for key in e2e} == groups  # every group's E2E
    # E2E is its own panel, not TTFT, and as the summary defines it (completed requests: a
    # request cut at the run's end, or failed before its first token, has a short e2e_ms of
    # its own): bucket by bucket above TTFT in both runs
    for panels in (results, open_results):
        e2e_p50, ttft_p50 = by_time(panels, E2E, "p50"), by_time(panels, TTFT, "p50")
        assert e2e_p50 and all(e2e_p50[k] > ttft_p50[k] for k in e2e_p50.keys() & ttft_p50.keys())
    # closed loop: no start is late, so schedule-relative TTFT is TTFT, bucket by bucket
    assert by_time(results, SCHEDULE_TTFT, "p99") == pytest.approx(by_time(results, TTFT, "p99"))
    assert set(column(results, QUEUE, "p99")) == {0}
    requests = sum(column(results, "Requests / s by outcome/A", "requests_per_s")) * 10
    assert requests == pytest.approx(total["requests"] + total["cancelled"])  # by outcome
    output = sum(column(results, "Output tokens / s/A", "output_tokens_per_s")) * 10
    assert output == pytest.approx(total["output_tokens"])
    # errors by the API's error type (cancellations are not errors)
    by_type: Counter[str] = Counter()
    for series in results["Errors by type/A"]:
        by_type[series["tags"]["error_type"]] += sum(row[1] for row in series["values"])
    expected: Counter[str] = Counter()
    for key, count in total["failures_by_type"].items():
        expected[key.split(": ", 1)[1]] += count
    assert by_type == expected and sum(expected.values()) == total["failures"] > 0
    assert sum(column(results, "Errors by type/B", "all_errors")) == total["failures"]
    assert max(column(results, "Users/A", "users")) == 12
    assert column(results, "Cumulative estimated cost (USD)/A", "cost_usd")[-1] == pytest.approx(
        total["cost_usd"], rel=1e-6
    )
    # headroom: requests and tokens on panels (axes) of their own
    requests_left = results["Rate-limit headroom: requests remaining/A"]
    assert {c for s in requests_left for c in s["columns"]} == {"time", "requests"}
    haiku = column(
        results, "Rate-limit headroom: requests remaining/A", "requests", model="claude-haiku-4-5"
    )
    assert haiku and max(haiku) <= 60
    tokens_left = results["Rate-limit headroom: tokens remaining/A"]
    assert "requests" not in {c for s in tokens_left for c in s["columns"]}
    fast = column(
        results, "Rate-limit headroom: tokens remaining/A", "fast_input_tokens", speed="fast"
    )
    assert fast and max(fast) <= 600
    assert sum(column(results, LIMITED, "rate_limited")) == total["rate_limited"] > 0
    assert sum(column(results, FELL_BACK, "fell_back")) == total["fallback"]["fell_back"] > 0
    assert sum(column(results, RESPONSES_429, "responses_429")) == total["responses_429"]
    assert total["responses_429"] >= total["rate_limited"]

    # The run with no 429: every count panel still has a series, of zeros.
    open_total = open_data["total"]
    assert open_total["responses_429"] == 0 and open_total["failures"] == 0
    counts = [
        (LIMITED, "rate_limited"),
        (FELL_BACK, "fell_back"),
        (RESPONSES_429, "responses_429"),
        ("Errors by type/B", "all_errors"),
    ]
    for key, name in counts:
        zeros = column(open_results, key, name)
        assert zeros and set(zeros) == {0}, key
    # open loop: starts went out late behind the in-flight users, and schedule-relative TTFT
    # counts that lateness
    assert max(column(open_results, QUEUE, "p99")) > 0
    open_ttft = by_time(open_results, TTFT, "p99")
    open_schedule = by_time(open_results, SCHEDULE_TTFT, "p99")
    assert open_schedule.keys() == open_ttft.keys()
    assert all(open_schedule[k] >= open_ttft[k] for k in open_ttft)
    assert any(open_schedule[k] > open_ttft[k] for k in open_ttft)


def test_compose_provisioning_and_code_agree() -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"influxdb", "grafana", "emulator", "master", "worker"}
    init = services["influxdb"]["environment"]
    env = compose["x-loadkit-env"]
    # The variables the code reads are the ones the stack sets.
    # (read, not imported: importing Locust would monkey-patch this test process)
    source = (ROOT / "loadkit" / "locust_plugin" / "influx.py").read_text()
    for name in ("INFLUXDB_V2_URL", "INFLUXDB_V2_TOKEN", "INFLUXDB_V2_ORG", "INFLUXDB_V2_BUCKET"):
        assert name in env and name in source
    assert env["INFLUXDB_V2_ORG"] == init["DOCKER_INFLUXDB_INIT_ORG"]
    assert env["INFLUXDB_V2_BUCKET"] == init["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert env["INFLUXDB_V2_URL"] == "http://influxdb:8086"
    # Published on loopback unless LOADKIT_BIND says otherwise.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("${LOADKIT_BIND:-127.0.0.1}:"), (name, port)
    assert "${LOADKIT_BIND:-127.0.0.1}:8086:8086" in services["influxdb"]["ports"]
    # The emulator's control endpoints need a token, which the harness sends.
    harness = (ROOT / "loadkit" / "locust_plugin" / "validation.py").read_text()
    assert "LOADKIT_EMULATOR_CONTROL_TOKEN" in services["emulator"]["environment"]
    assert "LOADKIT_EMULATOR_CONTROL_TOKEN" in env and "LOADKIT_EMULATOR_CONTROL_TOKEN" in harness
    assert "${INFLUXDB_TOKEN" in env["INFLUXDB_V2_TOKEN"]  # from the environment, not written
    # Grafana: the provisioned datasource is the InfluxDB service, and the dashboard uses it.
    datasources = yaml.safe_load(
        (ROOT / "dashboards/grafana/provisioning/datasources/loadkit.yaml").read_text()
    )["datasources"]
    (datasource,) = datasources
    assert datasource["url"] == env["INFLUXDB_V2_URL"]
    assert datasource["jsonData"]["dbName"] == env["INFLUXDB_V2_BUCKET"]
    assert "${INFLUXDB_TOKEN}" in datasource["secureJsonData"]["httpHeaderValue1"]
    assert "INFLUXDB_TOKEN" in services["grafana"]["environment"]
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
    providers = yaml.safe_load(
        (ROOT / "dashboards/grafana/provisioning/dashboards/loadkit.yaml").read_text()
    )["providers"]
    mounts = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert providers[0]["options"]["path"] in mounts
    assert "/etc/grafana/provisioning" in mounts
    # The committed dashboard is what generate.py builds.
    assert DASHBOARD.read_text() == generate.render()
    # The master targets the emulator service on the port it serves.
    master = services["master"]["command"]
    emulator_port = services["emulator"]["command"][-1]
    assert f"--target-url=http://emulator:{emulator_port}" in master
    assert (ROOT / master[2]).exists()
    assert any(
        arg.startswith("--workload=") and (ROOT / arg.split("=")[1]).exists() for arg in master
    )
    assert "${LOADKIT_BIND:-127.0.0.1}:8089:8089" in services["master"]["ports"]
    assert "--master-host=master" in services["worker"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 8000 8089 5557" in dockerfile
