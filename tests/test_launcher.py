"""The embedded emulator dies with the process that started it, even one killed by SIGKILL."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "messages.py"
GONE_WITHIN_S = 5.0

# A parent that starts an emulator (from its main thread, or from a thread that then ends),
# says who is who, and waits to be killed.
PARENT = textwrap.dedent(
    """
    import os, sys, threading, time
    from loadkit.emulator.launcher import EmulatorProcess

    emulator = EmulatorProcess()
    if sys.argv[1] == "thread":
        starter = threading.Thread(target=emulator.start)
        starter.start()
        starter.join()
        time.sleep(1.5)  # the starting thread has ended: the emulator must live on
    else:
        emulator.start()
    print(os.getpid(), emulator.process.pid, emulator.base_url, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def holds_sockets(pid: int) -> bool:
    """Whether ``pid`` still has a socket open (a dead process, zombie or gone, has none)."""
    try:
        return any(
            os.readlink(fd).startswith("socket:") for fd in Path(f"/proc/{pid}/fd").iterdir()
        )
    except OSError:
        return False


def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def is_emulator(pid: int | str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # (older launchers ran "python -m loadkit emulator")
    return b"loadkit.emulator.launcher" in cmdline or b"loadkit\x00emulator" in cmdline


def emulator_pid(pid: int) -> int | None:
    """The pid of ``pid``'s loadkit emulator child, if it has one."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            if is_emulator(child):
                return int(child)
    return None


def kill_leftover(pid: int | None) -> None:
    """Clean up after a failed test: stop the emulator this test started, by its pid."""
    if pid is not None and alive(pid) and is_emulator(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_emulator_dies_when_its_parent_is_killed(started_from: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, started_from],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    emulator = None
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        assert len(line) == 3, f"the parent did not start an emulator (exit {parent.poll()})"
        assert int(line[0]) == parent.pid
        emulator, port = int(line[1]), int(line[2].rsplit(":", 1)[1])
        assert alive(emulator) and answers(port)

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)

        assert wait_until(lambda: not alive(emulator), GONE_WITHIN_S), "the emulator outlived"
        # Its listening socket went with it. (Not "the port does not answer": the tests run
        # two at a time, and another test's emulator may be given the freed port at once.)
        assert not holds_sockets(emulator)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        kill_leftover(emulator)


def test_emulator_whose_parent_is_already_gone_exits_at_once() -> None:
    """The race: a parent that dies before the child asks for its death signal."""
    not_my_parent = 1 if os.getpid() != 1 else 2
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "loadkit.emulator.launcher", str(not_my_parent), "1",
         "emulator", "--port", "0"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"parent process {not_my_parent} is gone" in result.stderr
    assert "listening" not in result.stdout
    assert time.monotonic() - started < 10


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_locust_master_leaves_no_emulator_behind(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    master = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1",
         "-t", "60s", "--workload", "workloads/ci.yaml"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environ, cwd=ROOT,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert master.stderr is not None
        for line in master.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    emulator = None
    try:
        port = None
        deadline = time.monotonic() + 60
        seen = []
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert master.poll() is None, "".join(seen)[-3000:]
                continue
            seen.append(line)
            found = re.search(r"started the embedded emulator at http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        assert port is not None, "".join(seen)[-3000:]
        emulator = emulator_pid(master.pid)
        assert emulator is not None and answers(port)

        master.send_signal(signal.SIGKILL)
        master.wait(timeout=10)

        assert wait_until(lambda: not alive(emulator), GONE_WITHIN_S), "the emulator outlived"
        assert not holds_sockets(emulator)  # (its port may already be another test's)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        kill_leftover(emulator)
