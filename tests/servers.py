"""Real time-series servers from Debian's packages, on loopback ports, for tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: `make test` installs Debian's {package}")
    return found


def _wait(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            if httpx2.get(url, timeout=1).status_code < 500:
                return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class VictoriaMetrics:
    """Accepts InfluxDB line protocol on /api/v2/write; read back with /api/v1/export."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix``: what to run it under (``ip netns exec NAME``: on another host)."""
        self.binary = _binary("victoria-metrics", "victoria-metrics")
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.prefix = list(prefix)
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.prefix, self.binary, f"-httpListenAddr={self.host}:{self.port}",
             f"-storageDataPath={self.data_dir}", "-retentionPeriod=1y"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(f"{self.url}/health", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def export(self, metric: str, **labels: str) -> list[dict[str, Any]]:
        httpx2.get(f"{self.url}/internal/force_flush", timeout=10)
        selector = ",".join([f'__name__="{metric}"', *(f'{k}="{v}"' for k, v in labels.items())])
        response = httpx2.post(
            f"{self.url}/api/v1/export", data={"match[]": "{" + selector + "}"}, timeout=30
        )
        response.raise_for_status()
        import json

        return [json.loads(line) for line in response.text.splitlines() if line.strip()]


class InfluxDB1:
    """A real InfluxQL engine (InfluxDB 1.6): /write and /query."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = _binary("influxd", "influxdb")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = data_dir / "influxdb.conf"
        config.write_text(
            f'reporting-enabled = false\nbind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{data_dir}/meta"\n'
            f'[data]\n  dir = "{data_dir}/data"\n  wal-dir = "{data_dir}/wal"\n'
            f"  query-log-enabled = false\n"
            f"[monitor]\n  store-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
        )
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(f"{self.url}/ping", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def query(self, q: str, db: str = "loadkit") -> dict[str, Any]:
        response = httpx2.post(f"{self.url}/query", params={"db": db, "q": q}, timeout=30)
        response.raise_for_status()
        return response.json()

    def write_lines(self, lines: str, db: str = "loadkit") -> None:
        self.query(f'CREATE DATABASE "{db}"')
        response = httpx2.post(
            f"{self.url}/write", params={"db": db, "precision": "ns"}, content=lines, timeout=60
        )
        if response.status_code != 204:
            raise RuntimeError(f"InfluxDB /write answered {response.status_code}: {response.text}")
