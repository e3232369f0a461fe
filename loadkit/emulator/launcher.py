"""Start an emulator in a child process on a free loopback port, and stop it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

READY_PREFIX = "loadkit emulator listening on "


class EmulatorStartError(RuntimeError):
    pass


class EmulatorProcess:
    """``with EmulatorProcess(config={...}) as emu: emu.base_url``.

    The child is ``python -m loadkit emulator --port 0``; its first stdout line gives the URL.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        config_path: str | Path | None = None,
        seed: int | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 20.0,
        cpu: int | None = None,
    ) -> None:
        if config is not None and config_path is not None:
            raise ValueError("give config or config_path, not both")
        self._config = config
        self._config_path = Path(config_path) if config_path is not None else None
        self._seed = seed
        self._host = host
        self._timeout = start_timeout_s
        self._cpu = cpu
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self.base_url = ""

    def start(self) -> str:
        command = [sys.executable, "-m", "loadkit", "emulator", "--host", self._host, "--port", "0"]
        path = self._config_path
        if self._config is not None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="loadkit-emulator-")
            path = Path(self._tempdir.name) / "emulator.yaml"
            path.write_text(yaml.safe_dump(self._config), encoding="utf-8")
        if path is not None:
            command += ["--config", str(path)]
        if self._seed is not None:
            command += ["--seed", str(self._seed)]
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
        return self._stderr.read()

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
