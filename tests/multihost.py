"""A distributed loadkit run across hosts: a Locust master, workers, the emulator and (as the
InfluxDB server) VictoriaMetrics, each on its own host (``tests/netns.py``), with link delay
from the delaying relay (``tests/delay_relay.py``):

- the emulator listens on its host's loopback; the relay in front of it, on the host's address
  (``emulator:8000``), holds each direction ``rtt_ms / 2``: every worker's round trip to the
  target costs ``rtt_ms`` more. It also counts each client host's ``POST /v1/messages``.
- the master's ZeroMQ port is behind a relay too (``master:5557``, ``master_rtt_ms``).
- VictoriaMetrics listens on ``influxdb:8086``, with no delay.

``python -m tests.multihost`` (``make netns-demo``) runs a short distributed run across it.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.netns import Topology
from tests.runs import ROOT, clean_environment
from tests.servers import VictoriaMetrics

PYTHON = sys.executable
EMULATOR_PORT = 8000  # the relay's; the emulator itself is on its host's loopback, one above
MASTER_PORT = 5557  # the relay's; the master binds its host's loopback, one above
INFLUXDB_PORT = 8086
# Quick and steady replies: TTFT 40 ms + prefill, 20 tokens at 400/s, no jitter.
EMULATOR_CONFIG: dict[str, Any] = {
    "models": {
        "claude-haiku-4-5": {
            "ttft_base_ms": 40,
            "prefill_tokens_per_s": 100_000,
            "decode_tokens_per_s": 400,
            "ttft_jitter": 0.0,
            "decode_jitter": 0.0,
        }
    },
    "output_tokens": {"kind": "fixed", "value": 20},
}
WORKLOAD: dict[str, Any] = {
    "name": "multihost",
    "models": [{"model": "claude-haiku-4-5", "weight": 1}],
    "prompt_tokens": {"kind": "fixed", "value": 200},
    "max_tokens": {"kind": "fixed", "value": 64},
}


@dataclass
class StackSettings:
    workers: int = 3
    users_per_worker: int = 2
    run_time_s: int = 8
    stop_timeout_s: int = 20  # streams in flight at the end finish: nothing is cancelled
    rtt_ms: float = 20.0  # workers <-> emulator
    master_rtt_ms: float = 1.0  # workers <-> master
    influxdb: bool = False  # workers write their points to VictoriaMetrics on influxdb:8086


class Stack:
    """The running hosts and processes of one distributed run (use ``stack()``)."""

    def __init__(self, folder: Path, settings: StackSettings, topology: Topology) -> None:
        self.folder = folder
        self.settings = settings
        self.topology = topology
        self.summary_path = folder / "summary.json"
        self.relay_stats = folder / "emulator-relay.json"
        self.relays: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.master: subprocess.Popen[bytes] | None = None
        self.emulator: subprocess.Popen[bytes] | None = None
        self.victoria: VictoriaMetrics | None = None
        host = topology.hosts["emulator"]
        self.emulator_url = f"http://{host.address}:{EMULATOR_PORT}"  # through the relay

    @property
    def worker_names(self) -> list[str]:
        return [f"worker{i}" for i in range(1, self.settings.workers + 1)]

    def _relay(self, host: str, port: int, rtt_ms: float, *extra: str) -> None:
        address = self.topology.hosts[host].address
        self.relays[host] = self.topology.start(
            host,
            [PYTHON, str(ROOT / "tests" / "delay_relay.py"),
             "--listen", f"{address}:{port}", "--to", f"127.0.0.1:{port + 1}",
             "--delay-ms", str(rtt_ms / 2), *extra],
        )  # fmt: skip
        self.topology.wait_port(host, port)

    def start(self) -> None:
        s, topology = self.settings, self.topology
        config, workload = self.folder / "emulator.yaml", self.folder / "workload.yaml"
        config.write_text(yaml.safe_dump(EMULATOR_CONFIG))
        workload.write_text(yaml.safe_dump(WORKLOAD))
        self.emulator = topology.start(
            "emulator",
            [PYTHON, "-m", "loadkit", "emulator", "--host", "127.0.0.1",
             "--port", str(EMULATOR_PORT + 1), "--config", str(config), "--seed", "7"],
            env=clean_environment(), cwd=ROOT,
        )  # fmt: skip
        self._relay(
            "emulator", EMULATOR_PORT, s.rtt_ms,
            "--count-path", "/v1/messages", "--stats", str(self.relay_stats),
        )  # fmt: skip
        self._wait_emulator()
        env = clean_environment()
        if s.influxdb:
            host = topology.hosts["influxdb"]
            self.victoria = VictoriaMetrics(
                self.folder / "victoria", host.address, INFLUXDB_PORT,
                prefix=topology.command("influxdb", []),
            )  # fmt: skip
            self.victoria.start()
            env = clean_environment(
                {"INFLUXDB_V2_URL": f"http://influxdb:{INFLUXDB_PORT}", "INFLUXDB_V2_TOKEN": "t"}
            )
        self._relay("master", MASTER_PORT, s.master_rtt_ms)
        users = s.workers * s.users_per_worker
        self.master = topology.start(
            "master",
            [PYTHON, "-m", "locust", "-f", "locustfiles/messages.py", "--master", "--headless",
             "--master-bind-host", "127.0.0.1", "--master-bind-port", str(MASTER_PORT + 1),
             "--expect-workers", str(s.workers), "-u", str(users), "-r", str(users),
             "-t", f"{s.run_time_s}s", "--stop-timeout", f"{s.stop_timeout_s}s",
             "--target-url", f"http://emulator:{EMULATOR_PORT}", "--workload", str(workload),
             "--only-summary", "--summary-json", str(self.summary_path)],
            env=env, cwd=ROOT,
        )  # fmt: skip
        for name in self.worker_names:
            self.workers[name] = topology.start(
                name,
                [PYTHON, "-m", "locust", "-f", "locustfiles/messages.py", "--worker",
                 "--master-host", "master", "--master-port", str(MASTER_PORT)],
                env=env, cwd=ROOT,
            )  # fmt: skip

    def log_of(self, popen: subprocess.Popen[bytes] | None) -> str:
        process = next(p for p in self.topology.processes if p.popen is popen)
        return process.log.read_text(errors="replace")

    def _wait_emulator(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.emulator is not None and self.emulator.poll() is not None:
                raise RuntimeError(f"the emulator exited: {self.log_of(self.emulator)[-3000:]}")
            try:
                httpx2.get(f"{self.emulator_url}/_emulator/health", timeout=2).raise_for_status()
                return
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        response = httpx2.get(f"{self.emulator_url}/_emulator/stats", timeout=10)
        return dict(response.raise_for_status().json())

    def served(self) -> list[dict[str, Any]]:
        response = httpx2.get(f"{self.emulator_url}/_emulator/served", timeout=30)
        return list(response.raise_for_status().json())

    def wait_load(self, timeout: float = 60) -> float:
        """Until the emulator has received a request of the run; returns that moment."""
        deadline = time.monotonic() + timeout
        while self.stats()["totals"]["received"] == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request reached the emulator; logs in {self.folder}")
            if self.master is not None and self.master.poll() is not None:
                raise RuntimeError(f"the master exited early; {self.master_log()[-3000:]}")
            time.sleep(0.05)
        return time.monotonic()

    def master_log(self) -> str:
        return self.log_of(self.master)

    def wait_master(self, timeout: float) -> tuple[int, dict[str, Any] | None]:
        """The master's exit code and its summary JSON (None if none was written)."""
        assert self.master is not None
        try:
            code = self.master.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the master did not finish within {timeout} s:\n{self.master_log()[-3000:]}"
            ) from None
        data = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else None
        return code, data

    def requests_by_host(self) -> dict[str, int]:
        """What the emulator's relay counted: ``POST /v1/messages`` by sending host."""
        relay = self.relays["emulator"]
        self.relay_stats.unlink(missing_ok=True)
        relay.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.relay_stats.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = json.loads(self.relay_stats.read_text())
        by_address = {host.address: name for name, host in self.topology.hosts.items()}
        by_address[self.topology.bridge_address] = "test"  # this process, on the bridge
        return {by_address[a]: n for a, n in stats["requests_by_client"].items()}

    def worker_host(self, worker_id: str) -> str:
        """The host a Locust worker id names (Locust's ids start with the hostname)."""
        return worker_id.rsplit("_", 1)[0]


@contextmanager
def stack(folder: Path, settings: StackSettings | None = None) -> Iterator[Stack]:
    """A running stack; everything is stopped and removed on exit, failed or not."""
    settings = settings or StackSettings()
    names = ["master", "emulator", *(f"worker{i}" for i in range(1, settings.workers + 1))]
    if settings.influxdb:
        names.append("influxdb")
    with ExitStack() as exits:
        topology = exits.enter_context(Topology(names, folder / "logs"))
        running = Stack(folder, settings, topology)
        exits.callback(lambda: running.victoria.stop() if running.victoria else None)
        running.start()
        yield running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A short distributed run across namespaces")
    parser.add_argument("--folder", type=Path, default=ROOT / "reports" / "netns-demo")
    parser.add_argument("-t", "--run-time", type=int, default=10, help="seconds")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    settings = StackSettings(run_time_s=args.run_time, influxdb=True)
    with stack(args.folder, settings) as running:
        hosts = ", ".join(f"{n} {h.address}" for n, h in running.topology.hosts.items())
        print(f"hosts: {hosts}; {settings.rtt_ms:g} ms RTT to the emulator, "
              f"{settings.master_rtt_ms:g} ms to the master (delaying relays)")  # fmt: skip
        code, data = running.wait_master(timeout=args.run_time + settings.stop_timeout_s + 60)
        print(running.master_log()[-6000:])
        print(f"requests by host (the relay's count): {running.requests_by_host()}")
        for row in (data or {}).get("workers", {}).get("workers", []):
            print(f"{row['worker']}: {row['fate']}, {row['attempts_reported']} attempts reported")
    print(f"master exit code {code}; summary: {running.summary_path}")
    return 0 if data is not None else 1


if __name__ == "__main__":
    sys.exit(main())
