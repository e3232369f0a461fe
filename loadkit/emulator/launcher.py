"""Start an emulator in a child process on a free loopback port, and stop it.

The child dies with its parent, even one killed with SIGKILL (a crashed or killed Locust
master must not leave an emulator behind): on Linux it asks the kernel for SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), set first thing in the child and followed by a
check that the parent is still the one that started it (closing the race with a parent that
died before); everywhere, a watchdog thread polls the parent pid every second and stops the
child when it changes (SIGTERM, then a hard exit if the emulator has not stopped 5 s later).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from loadkit.emulator import command
from loadkit.emulator.parentdeath import tie_to_parent

READY_PREFIX = "loadkit emulator listening on "


class EmulatorStartError(RuntimeError):
    pass


class EmulatorProcess:
    """``with EmulatorProcess(config={...}) as emu: emu.base_url``.

    The child is ``python -m loadkit emulator --port 0``; its first stdout line gives the URL.
    ``processes``: ``--processes`` (worker processes on the one port; the child supervises
    them, and they die with it).
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        config_path: str | Path | None = None,
        seed: int | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 20.0,
        cpu: int | None = None,
        processes: int = 1,
    ) -> None:
        if config is not None and config_path is not None:
            raise ValueError("give config or config_path, not both")
        self._config = config
        self._config_path = Path(config_path) if config_path is not None else None
        self._seed = seed
        self._host = host
        self._timeout = start_timeout_s
        self._cpu = cpu
        self._processes = processes
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self.base_url = ""

    def start(self) -> str:
        # The kernel's parent-death signal follows the *thread* that forks the child: ask for
        # it only from the main thread (Locust's greenlets all run there), else a thread that
        # ends would kill the emulator; the watchdog covers the other cases.
        deathsig = threading.current_thread() is threading.main_thread()
        command = [
            sys.executable, "-m", "loadkit.emulator.launcher", str(os.getpid()), str(int(deathsig)),
            "emulator", "--host", self._host, "--port", "0",
        ]  # fmt: skip
        path = self._config_path
        if self._config is not None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="loadkit-emulator-")
            path = Path(self._tempdir.name) / "emulator.yaml"
            path.write_text(yaml.safe_dump(self._config), encoding="utf-8")
        if path is not None:
            command += ["--config", str(path)]
        if self._seed is not None:
            command += ["--seed", str(self._seed)]
        if self._processes != 1:
            command += ["--processes", str(self._processes)]
        cpu = self._cpu
        # A file, not a pipe: a chatty child must never block on a full stderr pipe.
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="loadkit-emulator-")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        )
        self.base_url = self._await_ready()
        return self.base_url

    def _await_ready(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
            if self.process.poll() is not None:
                break
        stderr = self.stderr_text()
        self.stop()
        raise EmulatorStartError(f"the emulator did not start: {stderr.strip() or 'timed out'}")

    def stderr_text(self) -> str:
        """What the child wrote to stderr so far (for diagnosing a failed test)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text: str = self._stderr.read()
        return text

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# The child's side --------------------------------------------------------------------------
def _child_main(argv: list[str]) -> int:
    """``python -m loadkit.emulator.launcher PARENT_PID DEATHSIG emulator ...``."""
    tie_to_parent(int(argv[0]), deathsig=argv[1] == "1")
    if argv[2:3] != ["emulator"]:
        raise SystemExit(f"usage: PARENT_PID DEATHSIG emulator [options], not {argv!r}")
    return command.main(argv[3:])


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
