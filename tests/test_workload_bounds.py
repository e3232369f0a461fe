"""Workload values that used to break or hang a run are refused when the file is loaded.

Each probe writes a bad file and expects a ``WorkloadError`` naming the file and the field;
one real Locust run checks the whole path: exit code 2, the message once, no traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.distributions import LogNormal, Normal
from loadkit.emulator.config import ConfigError, load_config
from loadkit.locust_plugin.options import add_options, check_options
from loadkit.prompts import PromptFactory
from loadkit.workload import (
    MAX_CONTEXT_TOKENS,
    MAX_OUTPUT_TOKENS,
    Sampler,
    WorkloadError,
    load_workload,
)

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "messages.py"
HAIKU = "claude-haiku-4-5"


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path) -> str:
    with pytest.raises(WorkloadError) as caught:
        load_workload(path)
    return str(caught.value)


def workload_text(**changes: Any) -> str:
    data: dict[str, Any] = {"name": "t", "models": [{"model": HAIKU}]}
    data.update(changes)
    return yaml.safe_dump(data)


ONE_MODEL = f"models: [{{model: {HAIKU}}}]\n"
# YAML text, the field the error must name, and a word of the reason.
BAD_FILES = {
    "weight-inf": (f"models: [{{model: {HAIKU}, weight: .inf}}]\n", "models.0.weight", "finite"),
    "weight-nan": (f"models: [{{model: {HAIKU}, weight: .nan}}]\n", "models.0.weight", "finite"),
    "weight-huge": (
        f"models: [{{model: {HAIKU}, weight: 1e308}}, {{model: {HAIKU}, weight: 1e308}}]\n",
        "models.0.weight",
        "less than or equal",
    ),
    "speed-weight-inf": (
        "models: [{model: claude-opus-4-6, speeds: {standard: 1, fast: .inf}}]\n",
        "models.0.speeds.fast",
        "finite",
    ),
    "bucket-weight-inf": (
        ONE_MODEL + "max_tokens: {kind: buckets, buckets: [{value: 10, weight: .inf}]}\n",
        "max_tokens.buckets.buckets.0.weight",
        "finite",
    ),
    "lognormal-median-1e300": (
        ONE_MODEL + "prompt_tokens: {kind: lognormal, median: 1e300, sigma: 1, max: 1000}\n",
        "prompt_tokens.lognormal.median",
        "less than or equal",
    ),
    "lognormal-sigma-huge": (
        ONE_MODEL + "prompt_tokens: {kind: lognormal, median: 100, sigma: 1000, max: 1000}\n",
        "prompt_tokens.lognormal.sigma",
        "less than or equal",
    ),
    "normal-mean-inf": (
        ONE_MODEL + "prompt_tokens: {kind: normal, mean: .inf, stddev: 1, max: 1000}\n",
        "prompt_tokens.normal.mean",
        "finite",
    ),
    "lognormal-without-max": (
        ONE_MODEL + "prompt_tokens: {kind: lognormal, median: 100, sigma: 1}\n",
        "prompt_tokens",
        "needs a max",
    ),
    "prompt-tokens-1e12": (
        ONE_MODEL + "prompt_tokens: {kind: fixed, value: 1000000000000}\n",
        "prompt_tokens.fixed.value",
        "less than or equal",
    ),
    "prompt-tokens-past-context": (
        ONE_MODEL + "prompt_tokens: {kind: uniform, min: 1, max: 2000000}\n",
        "prompt_tokens",
        "1000000",
    ),
    "model-prompt-tokens-past-context": (
        f"models: [{{model: {HAIKU}, prompt_tokens: {{kind: fixed, value: 1500000}}}}]\n",
        "models.0.prompt_tokens",
        "1000000",
    ),
    "max-tokens-past-max-output": (
        ONE_MODEL + "max_tokens: {kind: fixed, value: 200000}\n",
        "max_tokens",
        "128000",
    ),
    "system-prefix-1e8": (
        ONE_MODEL + "system_prefix: {tokens: 100000000}\n",
        "system_prefix.tokens",
        "less than or equal",
    ),
    "request-past-context": (
        ONE_MODEL + "system_prefix: {tokens: 600000}\n"
        "prompt_tokens: {kind: fixed, value: 300000}\nmax_tokens: {kind: fixed, value: 128000}\n",
        "models.0",
        "1028000",
    ),
    "temperature-nan": (ONE_MODEL + "temperature: .nan\n", "temperature", "finite"),
    "fallback-wait-inf": (
        ONE_MODEL + "fallback: {policy: retry-then-standard, max_wait_s: .inf}\n",
        "fallback.max_wait_s",
        "finite",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_out_of_bounds_values_name_file_and_field(tmp_path: Path, case: str) -> None:
    text, field, reason = BAD_FILES[case]
    path = write(tmp_path, "name: t\n" + text)
    message = refused(path)
    assert str(path) in message
    lines = message.splitlines()
    assert any(line.strip().startswith(f"{field}:") for line in lines[1:]), message
    assert reason in message


def test_largest_valid_request_loads_and_samples(tmp_path: Path) -> None:
    """The documented bounds themselves are accepted, and sampling near them is safe."""
    prefix = 10_000
    path = write(
        tmp_path,
        workload_text(
            system_prefix={"tokens": prefix},
            prompt_tokens={
                "kind": "lognormal",
                "median": 1e9,
                "sigma": 10,
                "max": MAX_CONTEXT_TOKENS - prefix - MAX_OUTPUT_TOKENS,
            },
            max_tokens={"kind": "fixed", "value": MAX_OUTPUT_TOKENS},
            models=[{"model": HAIKU, "weight": 1e9}, {"model": "claude-opus-4-6", "weight": 1e9}],
        ),
    )
    sampler = Sampler(load_workload(path), random.Random(1))
    draws = [sampler.draw() for _ in range(5000)]
    assert max(d.prompt_tokens for d in draws) + prefix + MAX_OUTPUT_TOKENS <= MAX_CONTEXT_TOKENS


def test_tiny_weights_sample_without_index_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        workload_text(
            models=[
                {"model": HAIKU, "weight": 5e-324, "speeds": {"standard": 5e-324}},
                {"model": "claude-opus-4-6", "weight": 0},
            ]
        ),
    )
    sampler = Sampler(load_workload(path), random.Random(2))
    assert {sampler.draw().model for _ in range(2000)} == {HAIKU}


@pytest.mark.parametrize(
    "dist",
    [
        LogNormal(median=1e9, sigma=10, min=0),
        Normal(mean=1e9, stddev=1e9, min=0),
    ],
    ids=["lognormal", "normal"],
)
def test_unclipped_distributions_at_their_bounds_never_overflow(dist: Any) -> None:
    rng = random.Random(3)
    assert all(d >= 0 for d in (dist.sample(rng) for _ in range(20000)))
    assert math.isfinite(dist.mean)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00\x01\x89PNG\r\n\x1a\n\x00\x00",  # binary
        "name: caf\xe9\n".encode("latin-1"),  # text, but not UTF-8
    ],
    ids=["binary", "latin-1"],
)
def test_binary_or_non_utf8_file_is_refused_cleanly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    message = refused(path)
    assert str(path) in message and "UTF-8" in message


def test_deeply_nested_yaml_is_refused_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, "models: " + "[" * 100_000 + "]" * 100_000 + "\n")
    message = refused(path)
    assert str(path) in message


def test_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(64 << 20)  # a sparse 64 MiB file
    message = refused(path)
    assert str(path) in message and "larger than" in message


def test_emulator_config_shares_the_bounds_and_the_clean_errors(tmp_path: Path) -> None:
    """The YAML reader and the distributions are shared with the emulator's config."""
    path = write(tmp_path, "output_tokens: {kind: lognormal, median: .inf, sigma: 1}\n")
    with pytest.raises(ConfigError, match=r"output_tokens\.lognormal\.median: .*finite"):
        load_config(path)
    path.write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    path.write_text("output_tokens: {kind: normal, mean: 250, stddev: 50}\n")
    assert load_config(path).output_tokens.highest is None  # no max needed there


def test_system_prefix_past_the_corpus_is_not_capped() -> None:
    """A prefix larger than the prompt corpus gets its full size (it was silently capped)."""

    def count_tokens(model: str, messages: list[dict[str, Any]], system: Any) -> int:
        text = messages[0]["content"] + "".join(b["text"] for b in system or [])
        return len(text) // 4

    tokens = 900_000  # 3.6M characters, the corpus has 1M
    factory = PromptFactory(seed=5, system_prefix_tokens=tokens)
    factory.calibrate(HAIKU, count_tokens)
    _, system = factory.build(HAIKU, tokens + 100)
    sent = count_tokens(HAIKU, [{"content": ""}], system)
    assert abs(sent - tokens) <= tokens * 0.01, sent
    _, again = factory.build(HAIKU, tokens + 100)
    assert again == system  # the same prefix every request (cacheable)


# --request-timeout ----------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="locust", exit_on_error=False)
    add_options(built)
    return built


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e9", "soon"])
def test_request_timeout_error_says_why(value: str) -> None:
    with pytest.raises(argparse.ArgumentError) as caught:
        parser().parse_args([f"--request-timeout={value}"])
    text = str(caught.value)
    assert "--request-timeout" in text and "seconds" in text and "0 <" in text


def test_request_timeout_accepts_positive_seconds() -> None:
    assert parser().parse_args(["--request-timeout", "0.5"]).request_timeout == 0.5
    assert parser().parse_args([]).request_timeout == 600.0


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_request_timeout_from_the_web_form_is_checked(value: float) -> None:
    # The web UI converts form fields with float(), bypassing the parser's type.
    options = parser().parse_args([])
    options.request_timeout = value
    with pytest.raises(ValueError, match="--request-timeout"):
        check_options(options)


# Real Locust runs -------------------------------------------------------------------------
def locust_run(tmp_path: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", *args],
        capture_output=True, text=True, timeout=timeout, env=environ, cwd=tmp_path,
    )  # fmt: skip
    return result.returncode, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["weight-inf", "lognormal-median-1e300", "prompt-tokens-1e12", "binary"]
)
def test_locust_run_with_a_bad_workload_stops_once_and_quickly(tmp_path: Path, case: str) -> None:
    """Each of these once broke a run: tracebacks by the thousand, or a hang past 90 s (a hang
    is caught by ``locust_run``'s timeout; the time is not asserted otherwise, since a start
    on a loaded machine can take long)."""
    path = tmp_path / "bad.yaml"
    if case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
        field = "not UTF-8"
    else:
        text, field, _ = BAD_FILES[case]
        path.write_text("name: t\n" + text)
    code, stderr = locust_run(tmp_path, "-u", "2", "-t", "5s", "--workload", str(path))
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Error:" not in stderr, stderr[-3000:]
    assert stderr.count(str(path)) == 1, stderr[-3000:]  # the message, printed once
    assert stderr.count(field) == 1, stderr[-3000:]


@pytest.mark.slow
def test_locust_run_with_zero_request_timeout_is_refused(tmp_path: Path) -> None:
    code, stderr = locust_run(tmp_path, "-u", "1", "-t", "5s", "--request-timeout", "0")
    assert code == 2, stderr[-3000:]
    assert "--request-timeout" in stderr and "Traceback" not in stderr
