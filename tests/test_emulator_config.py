"""The emulator's configuration, token counting and buckets, without a server."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from loadkit.distributions import Buckets, LogNormal, Uniform
from loadkit.emulator.config import (
    ConfigError,
    EmulatorConfig,
    config_from_mapping,
    describe_bounds,
    load_config,
)
from loadkit.emulator.launcher import EmulatorProcess, EmulatorStartError
from loadkit.emulator.limits import Bucket
from loadkit.emulator.prompt import analyse_prompt, text_tokens
from loadkit.emulator.stats import COUNTER_FIELDS, OUTCOMES, TOKEN_FIELDS, Counters

ROOT = Path(__file__).resolve().parent.parent


def test_documented_defaults_equal_the_code() -> None:
    assert load_config(ROOT / "docs" / "emulator-config.yaml") == EmulatorConfig()


BOUNDS = re.compile(r"(\[at most \d+ [a-z]+\]|[\[(][-0-9.e]+, [-0-9.e]+[\])])\s*$")
KEY = re.compile(r"^( *)([A-Za-z0-9_.-]+):")


def _documented_bounds() -> dict[str, str]:
    """``models.*.ttft_base_ms`` -> ``[0, 600000]``: the brackets at the end of the comments
    of docs/emulator-config.yaml, by the field's path (dict keys as ``*``)."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (ROOT / "docs" / "emulator-config.yaml").read_text().splitlines():
        key = KEY.match(line)
        if key is None:
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(2)))
        _, _, comment = line.partition(" #")
        bounds = BOUNDS.search(comment) if comment else None
        if bounds is not None:
            found.setdefault(_generic([name for _, name in stack]), bounds.group(1))
    return found


def _generic(path: list[str]) -> str:
    """Dict keys (model names, rate-limit classes) replaced by ``*``."""
    out: list[str] = []
    model: Any = EmulatorConfig
    index = 0
    while index < len(path):
        out.append(path[index])
        annotation = model.model_fields[path[index]].annotation
        index += 1
        if get_origin(annotation) is dict and index < len(path):
            out.append("*")
            index += 1
            model = get_args(annotation)[1]
        else:
            model = annotation
    return ".".join(out)


def _bounded_fields(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if path == "output_tokens":
            continue  # a loadkit.distributions model: bounded there
        if describe_bounds(info) is not None:
            out[path] = info
        annotation = info.annotation
        if get_origin(annotation) is dict:
            out.update(_bounded_fields(get_args(annotation)[1], f"{path}.*."))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(_bounded_fields(annotation, f"{path}."))
    return out


def test_documented_bounds_equal_the_code() -> None:
    """Every bounded field has its bounds written in docs/emulator-config.yaml, as the
    code has them (``[a, b]``, ``(a, b]``, ``[at most N ...]``)."""
    documented = _documented_bounds()
    fields = _bounded_fields(EmulatorConfig)
    assert len(fields) > 30
    assert {path: describe_bounds(info) for path, info in fields.items()} == documented


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"models": {"claude-opus-4-6": {"decode_tokens_per_s": 0}}}, "decode_tokens_per_s"),
        ({"faults": {"api_error_rate": 0.7, "overloaded_rate": 0.7}}, "faults"),
        ({"output_tokens": {"kind": "uniform", "min": 9, "max": 1}}, r"min \(9\) is greater"),
        ({"output_tokens": {"kind": "buckets", "buckets": [{"value": 1, "weight": 0}]}}, "zero"),
        ({"tokens_per_delta": 0}, "tokens_per_delta"),
        ({"tokens_per_delta": 20000}, "tokens_per_delta: Input should be less than or equal"),
        ({"cache": {"default_ttl_s": float("inf")}}, "default_ttl_s: Input should be a finite"),
        ({"faults": {"slow_first_byte_ms": float("nan")}}, "slow_first_byte_ms: Input should"),
        ({"models": {"claude-opus-4-6": {"max_concurrent_streams": 10**9}}}, "max_concurrent"),
        ({"served_log_size": 10**7}, "served_log_size"),
        ({"http": {"idle_timeout_s": 0}}, "http.idle_timeout_s"),
        ({"api_keys": ["k" * 1001]}, "api_keys.0"),
        ({"models": {"": {}}}, "models"),
        ({"surprise": 1}, "surprise"),
        ({"models": {"claude-opus-4-6": {"rate_limit_class": "nope"}}}, "rate_limit_class"),
    ],
)
def test_invalid_config_names_the_field(data: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config_from_mapping(data, "test.yaml")


def test_yaml_infinity_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text("rate_limits:\n  opus:\n    requests_per_minute: .inf\n")
    with pytest.raises(ConfigError, match=r"rate_limits\.opus\.requests_per_minute"):
        load_config(path)


def test_cli_rejects_bad_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  claude-haiku-4-5:\n    ttft_base_ms: -5\n")
    result = subprocess.run(
        [sys.executable, "-m", "loadkit", "emulator", "--config", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "models.claude-haiku-4-5.ttft_base_ms" in result.stderr and str(bad) in result.stderr
    with pytest.raises(EmulatorStartError, match="ttft_base_ms"):
        EmulatorProcess(config_path=bad).start()


def test_token_count_approximation() -> None:
    assert text_tokens("") == 0 and text_tokens("abcd") == 1 and text_tokens("abcde") == 2
    assert text_tokens("é") == 1  # UTF-8 bytes, not characters
    body = {"system": "abcd" * 10, "messages": [{"role": "user", "content": "abcd" * 100}]}
    # 3 per request + 3 for the system prompt + 10 + 4 per message + 100
    assert analyse_prompt(body, None).tokens == 3 + 3 + 10 + 4 + 100


def test_breakpoints_hash_prefixes_per_scope() -> None:
    marked = {"type": "text", "text": "x" * 400, "cache_control": {"type": "ephemeral"}}
    body = {"system": [marked], "messages": [{"role": "user", "content": "hello"}]}
    fast = analyse_prompt(body, b"opus\0fast").breakpoints
    standard = analyse_prompt(body, b"opus\0standard").breakpoints
    again = analyse_prompt(body, b"opus\0standard").breakpoints
    assert len(standard) == 1 and standard[0].tokens == 3 + 3 + 100
    assert standard[0].digest == again[0].digest != fast[0].digest


def test_bucket_refills_continuously() -> None:
    bucket = Bucket(60, now=0.0)  # one unit per second
    assert bucket.wait_for(60, 0.0) == 0
    bucket.take(60)
    assert bucket.wait_for(1, 0.0) == pytest.approx(1.0)
    assert bucket.remaining(0.5) == 0 and bucket.remaining(2.0) == 2
    assert bucket.wait_for(1000, 2.0) == pytest.approx(58.0)  # over capacity: needs a full bucket
    bucket.give_back(100, 2.0)
    assert bucket.remaining(2.0) == 60


def test_distributions_sample_within_bounds() -> None:
    rng = random.Random(3)
    uniform = Uniform(min=5, max=9)
    assert {uniform.sample(rng) for _ in range(200)} == set(range(5, 10))
    lognormal = LogNormal(median=100, sigma=1.0, min=10, max=500)
    draws = [lognormal.sample(rng) for _ in range(2000)]
    assert min(draws) >= 10 and max(draws) <= 500
    assert 80 < sorted(draws)[1000] < 125
    buckets = Buckets(buckets=[{"value": 1, "weight": 1}, {"value": 2, "weight": 3}])
    share = sum(buckets.sample(rng) == 2 for _ in range(4000)) / 4000
    assert 0.7 < share < 0.8


def test_counters_hold_every_outcome_and_token_field_in_order() -> None:
    """``received == in_flight + sum(OUTCOMES)``: a new outcome must be a counter too.
    ``acceleration_limited`` is a part of ``rate_limited``, not an outcome of its own."""
    expected = ("in_flight", "queued", "received", *OUTCOMES, *TOKEN_FIELDS, "acceleration_limited")
    assert expected == COUNTER_FIELDS
    assert Counters(completed=2).as_dict()["completed"] == 2
