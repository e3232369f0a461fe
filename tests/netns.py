"""A multi-host topology on one machine: one Linux network namespace per host, joined by veth
pairs on a bridge, for the multi-host tests (needs root; CI has it).

``Topology`` is a context manager: it makes the namespaces, links, addresses and a hosts file
per namespace (``/etc/netns/NAME/hosts``, which ``ip netns exec`` mounts over ``/etc/hosts``:
every host finds the others by name), starts processes in them, and on exit, failed or not,
kills every process it started, and removes the namespaces, links and files. Names are unique
per topology (two tests can build theirs at once).

Each process runs with its host's name as its hostname (a UTS namespace of its own), so
Locust's worker ids and the InfluxDB sink's tags name the host, as on separate machines.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

NETNS_ETC = Path("/etc/netns")


class TopologyError(RuntimeError):
    """The topology cannot be built here; the message says why."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise TopologyError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def require_root() -> None:
    """Fail (not skip) with the reason when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise TopologyError(
            "the multi-host tests make Linux network namespaces, which needs root: run them "
            "as root (CI does); they are not skipped"
        )
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        raise TopologyError("the multi-host tests need `ip` (iproute2) and `unshare` (util-linux)")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route of this machine overlaps."""
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    used = []
    for line in routes.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast", "unicast"):
            first = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(first, strict=False))
    for _ in range(100):
        net = ipaddress.IPv4Network(
            f"10.{200 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24"
        )
        if not any(net.overlaps(other) for other in used if other.prefixlen > 0):
            return net
    raise TopologyError("no free /24 subnet in 10.200.0.0/13")


@dataclass
class Host:
    """One host of the topology: a namespace with one link to the bridge."""

    name: str  # the host's name on the topology ("master", "worker1", "emulator"...)
    netns: str
    address: str
    link: str  # the bridge's end of the host's veth pair (set down: the host is cut off)


@dataclass
class Process:
    host: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Topology:
    """Hosts by name, each in its own namespace, on one bridge (see the module docstring)."""

    names: Sequence[str]
    logs: Path  # each process's stdout and stderr go to LOGS/<host>-<n>.log
    aliases: dict[str, list[str]] = field(default_factory=dict)  # host -> more names for it
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    bridge: str = ""
    bridge_address: str = ""  # this (root) namespace's address on the bridge
    _links: list[str] = field(default_factory=list)

    def __enter__(self) -> Topology:
        require_root()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # building ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        net = _free_subnet()
        addresses = list(net.hosts())
        self.bridge = f"lk{self.token}br"
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        self.bridge_address = str(addresses[0])
        _ip("addr", "add", f"{self.bridge_address}/{net.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self.names, start=1):
            host = Host(
                name, f"lk{self.token}-{name}", str(addresses[index]), f"lk{self.token}h{index}"
            )
            inside = f"lk{self.token}n{index}"
            _ip("netns", "add", host.netns)
            self.hosts[name] = host
            _ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
            self._links.append(host.link)
            _ip("link", "set", inside, "netns", host.netns)
            _ip("-n", host.netns, "link", "set", inside, "name", "eth0")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/{net.prefixlen}", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("link", "set", host.link, "master", self.bridge, "up")
        lines = ["127.0.0.1 localhost"]
        for host in self.hosts.values():
            lines.append(" ".join([host.address, host.name, *self.aliases.get(host.name, [])]))
        for host in self.hosts.values():
            folder = NETNS_ETC / host.netns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")

    # processes -----------------------------------------------------------------------------
    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on ``host``: in its namespace, with its name as the hostname."""
        netns = self.hosts[host].netns
        return [
            "ip", "netns", "exec", netns, "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv,
        ]  # fmt: skip

    def start(
        self,
        host: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host``; it is killed when the topology closes, if still running."""
        log = self.logs / f"{host}-{len(self.processes)}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(
                self.command(host, argv),
                stdout=handle if stdout is None else stdout,
                stderr=handle,
                env=env,
                cwd=cwd,
            )
        self.processes.append(Process(host, list(argv), popen, log))
        return popen

    def wait_port(self, host: str, port: int, timeout: float = 30) -> None:
        """Until ``host:port`` accepts connections from this (root) namespace."""
        address = self.hosts[host].address
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TopologyError(
                        f"{host} ({address}:{port}) did not accept connections within {timeout} s"
                        f"; logs in {self.logs}"
                    ) from None
                time.sleep(0.05)

    # faults --------------------------------------------------------------------------------
    def link_down(self, host: str) -> None:
        """Cut ``host`` off: its link's bridge end goes down, its packets are lost."""
        _ip("link", "set", self.hosts[host].link, "down")

    def link_up(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].link, "up")

    @contextlib.contextmanager
    def cut_off(self, host: str) -> Iterator[None]:
        self.link_down(host)
        try:
            yield
        finally:
            self.link_up(host)

    # cleaning up ---------------------------------------------------------------------------
    def stop(self, popen: subprocess.Popen[bytes], timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)

    def close(self) -> None:
        """Kill what was started, remove namespaces, links and hosts files; never raises."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(process.popen, timeout=5)
        for host in self.hosts.values():
            # anything left in the namespace was started by this topology (children)
            pids = subprocess.run(
                ["ip", "netns", "pids", host.netns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
            shutil.rmtree(NETNS_ETC / host.netns, ignore_errors=True)
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.hosts.clear()
        self._links.clear()

    def leftovers(self) -> list[str]:
        """Namespaces, links or files of this topology still present (empty after close)."""
        found = []
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found += [line.split()[0] for line in netns.splitlines() if f"lk{self.token}" in line]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found += [
            line.split(":")[1].strip() for line in links.splitlines() if f"lk{self.token}" in line
        ]
        found += [str(p) for p in NETNS_ETC.glob(f"lk{self.token}-*")]
        return found
