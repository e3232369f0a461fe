from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from loadkit.emulator.launcher import EmulatorProcess

# Quick models for tests: short TTFT, fast decode, no jitter unless a test asks for it, and
# fast mode a constant 2.5x (tests/test_fast_speed.py draws it from a distribution).
QUICK_MODELS: dict[str, Any] = {
    name: {
        "ttft_base_ms": 40,
        "prefill_tokens_per_s": 100_000,
        "decode_tokens_per_s": 400,
        "ttft_jitter": 0.0,
        "decode_jitter": 0.0,
        "fast_decode_multiplier": 2.5,
        "fast_decode_spread": 0.0,
    }
    for name in ("claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-5", "claude-haiku-4-5")
}
QUICK_CONFIG: dict[str, Any] = {
    "models": QUICK_MODELS,
    "output_tokens": {"kind": "fixed", "value": 20},
    "fractional_retry_after": True,
}


class Control:
    """The emulator's control endpoints, for tests."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10)

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_emulator/stats").raise_for_status().json()

    def row(self, model: str, speed: str) -> dict[str, Any]:
        for row in self.stats()["by_model_speed"]:
            if row["model"] == model and row["speed"] == speed:
                return row
        return {}

    def configure(self, patch: dict[str, Any]) -> httpx2.Response:
        return self.http.post("/_emulator/config", json=patch)

    def reset(self) -> None:
        self.http.post("/_emulator/reset").raise_for_status()

    def served(self, request_id: str) -> dict[str, Any]:
        found = self.http.get("/_emulator/served", params={"request_id": request_id}).json()
        assert len(found) == 1, found
        return found[0]


@contextlib.contextmanager
def emulator_with_control_token(
    config: dict[str, Any], seed: int, token: str
) -> Iterator[EmulatorProcess]:
    """An emulator started with LOADKIT_EMULATOR_CONTROL_TOKEN in its environment (this
    process's environment is left as it was)."""
    saved = os.environ.get("LOADKIT_EMULATOR_CONTROL_TOKEN")
    os.environ["LOADKIT_EMULATOR_CONTROL_TOKEN"] = token
    try:
        emu = EmulatorProcess(config=config, seed=seed)
        emu.start()
    finally:
        if saved is None:
            del os.environ["LOADKIT_EMULATOR_CONTROL_TOKEN"]
        else:
            os.environ["LOADKIT_EMULATOR_CONTROL_TOKEN"] = saved
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(config=QUICK_CONFIG, seed=7) as emu:
        yield emu


@pytest.fixture()
def control(emulator: EmulatorProcess) -> Iterator[Control]:
    """A clean emulator (stats, cache, limits) restored to the quick config after the test."""
    ctl = Control(emulator.base_url)
    original = ctl.http.get("/_emulator/config").raise_for_status().json()
    ctl.reset()
    yield ctl
    ctl.configure(original).raise_for_status()
    ctl.reset()
    ctl.http.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Locust's import monkey-patches the process with gevent: in this test process that
    would turn the timing tests' threads into greenlets (a CPU-bound one never yields).
    Locust runs in subprocesses here; no test module may import it."""
    import sys

    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        patched = [m for m in ("socket", "threading", "time") if monkey.is_module_patched(m)]
        if patched:
            raise pytest.UsageError(
                f"a test module imported Locust (gevent patched {', '.join(patched)}): "
                "import loadkit.locust_plugin submodules that do not import Locust, or run "
                "Locust in a subprocess"
            )
