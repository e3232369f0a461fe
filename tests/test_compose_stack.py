"""The compose stack's wiring, run: each service of docker-compose.yml started as a local process
with its own command line and environment, on a host of its own (a network namespace named
after the service: ``tests/netns.py``), so ports, hostnames, environment variables, commands
and healthchecks are checked as Compose would wire them (issue #14, part 2).

No container engine and no InfluxDB 2 or Grafana image run here; what stands in for what:

- the image's installed ``loadkit``/``locust``/``python``: the test interpreter's venv first
  on ``PATH``, the checkout as the working directory (the image's ``WORKDIR``, which holds the
  same ``locustfiles/`` and ``workloads/``, checked against the Dockerfile's ``COPY`` lines);
- ``influxdb`` (``influxdb:2.7``): VictoriaMetrics (``tests/servers.py``), which takes the
  same line-protocol writes on ``/api/v2/write``, on the ``influxdb`` host at the service's
  port; its healthcheck (``influx ping``) is replaced by VictoriaMetrics's ``/health``, and it
  does not check the token;
- ``grafana``: not run; its provisioned datasource is checked to name the ``influxdb`` service
  and port;
- ``worker`` (``--scale worker=2``): two hosts, ``worker1`` and ``worker2``;
- Compose's ``${VAR:?message}``/``${VAR:-default}`` interpolation: done here, with the two
  tokens the file asks for set to random values.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.netns import Topology, TopologyError, require_root
from tests.runs import ROOT, clean_environment
from tests.servers import VictoriaMetrics

pytestmark = pytest.mark.slow
WORKERS = 2
TRACE = "workloads/traces/example-loadkit.jsonl"
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ``$$``, ``${V}``, ``${V:-d}``, ``${V-d}``,
    ``${V:?err}``, ``${V?err}`` and ``$V``; a required variable that is unset is an error."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        found = env.get(name)
        empty = found is None or (found == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and empty:
            raise ValueError(f"docker-compose.yml needs {name}: {arg}")
        if op in (":-", "-") and empty:
            return arg
        return found or ""

    return VARIABLE.sub(value, text)


def resolved(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolved(item, env) for key, item in node.items()}
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    variables = {
        "INFLUXDB_TOKEN": secrets.token_hex(24),
        "LOADKIT_EMULATOR_CONTROL_TOKEN": secrets.token_hex(16),
    }
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merge keys resolved
    return {"variables": variables, "services": resolved(data["services"], variables)}


def container_port(mapping: str) -> int:
    """The container's port of a ``[host:]published:container`` mapping."""
    return int(mapping.split(":")[-1].split("/")[0])


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment over a clean one, with the image's commands on ``PATH``."""
    scripts = Path(sys.executable).parent  # this interpreter's venv: loadkit, locust, python
    env = clean_environment({"PATH": f"{scripts}:{os.environ.get('PATH', '')}"})
    given = service.get("environment") or {}
    if isinstance(given, list):
        given = dict(item.split("=", 1) for item in given)
    env.update({key: str(value) for key, value in given.items()})
    return env


def healthcheck(topology: Topology, host: str, service: dict[str, Any], timeout: float) -> None:
    """Run the service's healthcheck command on its host until it passes."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            topology.command(host, test[1:]), env=environment(service), cwd=ROOT,
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{host}'s healthcheck {test[1:]} failed: {result.stderr[-2000:]}")
        time.sleep(0.5)


def stop_and_wait(web: str) -> None:
    """Stop the run from the web UI and wait until the master says it has stopped."""
    httpx2.post(f"{web}/stop", timeout=30)
    deadline = time.monotonic() + 30
    while httpx2.get(f"{web}/stats/requests", timeout=5).json()["state"] != "stopped":
        assert time.monotonic() < deadline, "the run did not stop"
        time.sleep(0.2)


def copied_by_dockerfile() -> set[str]:
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"]:
            copied.update(p.rstrip("/").removeprefix("./") for p in parts[1:-1])
    return copied


@pytest.fixture()
def topology(tmp_path: Path) -> Iterator[Topology]:
    try:
        require_root()
    except TopologyError as err:
        pytest.fail(str(err), pytrace=False)
    names = ["influxdb", "emulator", "master", *(f"worker{i}" for i in range(1, WORKERS + 1))]
    with Topology(names, tmp_path / "logs") as built:
        yield built


def test_compose_services_run_and_are_wired(
    compose: dict[str, Any], topology: Topology, tmp_path: Path
) -> None:
    services = compose["services"]
    assert set(services) == {"influxdb", "grafana", "emulator", "master", "worker"}
    hosts = topology.hosts
    # Commands: their files are in the image (copied by the Dockerfile) and in this checkout.
    copied = copied_by_dockerfile()
    for name in ("emulator", "master", "worker"):
        for arg in services[name]["command"]:
            value = arg.split("=", 1)[-1]
            if value.endswith((".py", ".yaml")) and "://" not in value:
                assert value.split("/")[0] in copied and (ROOT / value).exists(), (name, value)

    # influxdb: VictoriaMetrics on the service's container port, on the influxdb host.
    influx_port = container_port(services["influxdb"]["ports"][0])
    victoria = VictoriaMetrics(
        tmp_path / "victoria", hosts["influxdb"].address, influx_port,
        prefix=topology.command("influxdb", []),
    )  # fmt: skip
    victoria.start()
    try:
        # grafana reads the influxdb service
        datasources = yaml.safe_load(
            (ROOT / "dashboards/grafana/provisioning/datasources/loadkit.yaml").read_text()
        )["datasources"]
        assert datasources[0]["url"] == f"http://influxdb:{influx_port}"

        # emulator: its command and environment; its healthcheck passes; its published port
        emulator = services["emulator"]
        topology.start("emulator", emulator["command"], env=environment(emulator), cwd=ROOT)
        healthcheck(topology, "emulator", emulator, timeout=30)
        emulator_port = container_port(emulator["ports"][0])
        emulator_url = f"http://{hosts['emulator'].address}:{emulator_port}"
        stats = httpx2.get(f"{emulator_url}/_emulator/stats", timeout=5).json()
        assert stats["totals"]["received"] == 0
        # LOADKIT_EMULATOR_CONTROL_TOKEN reached it: control needs that token
        token = compose["variables"]["LOADKIT_EMULATOR_CONTROL_TOKEN"]
        refused = httpx2.post(f"{emulator_url}/_emulator/reset", timeout=5)
        assert refused.status_code in (401, 403), refused.status_code
        allowed = httpx2.post(
            f"{emulator_url}/_emulator/reset",
            headers={"authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert allowed.status_code == 200, allowed.text

        # master: its command and environment (the emulator and influxdb by service name)
        master = services["master"]
        topology.start("master", master["command"], env=environment(master), cwd=ROOT)
        healthcheck(topology, "master", master, timeout=60)
        web_port = container_port(master["ports"][0])
        web = f"http://{hosts['master'].address}:{web_port}"
        # workers: the same image and environment, finding the master by its service name
        worker = services["worker"]
        for i in range(1, WORKERS + 1):
            topology.start(f"worker{i}", worker["command"], env=environment(worker), cwd=ROOT)
        deadline = time.monotonic() + 60
        while httpx2.get(f"{web}/stats/requests", timeout=5).json()["worker_count"] < WORKERS:
            assert time.monotonic() < deadline, "the workers did not connect to the master"
            time.sleep(0.5)

        # a run started from the web UI, as a user would, on the datasets workload (the
        # master reads its dataset files from the image's workloads/datasets/): requests reach
        # the emulator, and every worker's points reach the influxdb service
        form = {"user_count": 4, "spawn_rate": 4, "workload": "workloads/datasets.yaml"}
        started = httpx2.post(f"{web}/swarm", data=form, timeout=30)
        assert started.json()["success"], started.text
        deadline = time.monotonic() + 60
        writers: set[str] = set()
        while len(writers) < WORKERS:
            assert time.monotonic() < deadline, f"points from {writers} only"
            time.sleep(1.0)
            series = victoria.export("llm_request_attempts")
            writers = {s["metric"]["worker"].split("-worker-")[0] for s in series}
        stop_and_wait(web)
        received = httpx2.get(f"{emulator_url}/_emulator/stats", timeout=5).json()
        assert received["totals"]["received"] > 0
        assert writers == {f"worker{i}" for i in range(1, WORKERS + 1)}
        outcomes = {s["metric"]["outcome"] for s in victoria.export("llm_request_attempts")}
        assert "ok" in outcomes, outcomes

        # a trace replay from the web UI: every worker reads the trace from its own image
        # (a worker whose file differs from the master's refuses the start) and sends its
        # share, every other entry: all of them reach the emulator, each once
        entries = len((ROOT / TRACE).read_text().splitlines())
        before = received["totals"]["received"]
        form = {
            "user_count": WORKERS,
            "spawn_rate": WORKERS,
            "workload": "workloads/default.yaml",
            "trace": TRACE,
            "trace_speedup": 40,  # its 44 s in about 1 s
        }
        started = httpx2.post(f"{web}/swarm", data=form, timeout=30)
        assert started.json()["success"], started.text
        deadline = time.monotonic() + 60
        sent = 0
        while sent < entries:
            assert time.monotonic() < deadline, f"{sent} of the trace's {entries} entries sent"
            time.sleep(0.2)
            stats = httpx2.get(f"{emulator_url}/_emulator/stats", timeout=5).json()
            sent = stats["totals"]["received"] - before
        stop_and_wait(web)
        stats = httpx2.get(f"{emulator_url}/_emulator/stats", timeout=5).json()
        assert stats["totals"]["received"] - before == entries
    finally:
        victoria.stop()
    for process in topology.processes:
        assert process.popen.poll() is None, (
            f"{process.host} exited: {process.log.read_text()[-2000:]}"
        )
