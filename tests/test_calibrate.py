"""``loadkit calibrate`` on records of known parameters (written by the real records writer),
and its answers to records it cannot use.

The records follow the emulator's model (docs/emulator-config.yaml): TTFT = (base + prefill
tokens / prefill rate) x a mean-1 log-normal factor, decode = rate x such a factor (x the
fast speed-up, normal around its mean), and limits as the API's response headers state
them (platform.claude.com/docs/en/api/rate-limits, "Response headers": one
``anthropic-ratelimit-<bucket>-limit`` per bucket; fast mode's ``anthropic-fast-*``).
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadkit.calibrate import CalibrateError, Estimate, calibrate
from loadkit.calibrate_output import config_document
from loadkit.emulator.config import EmulatorConfig, config_from_mapping, load_config
from loadkit.record import Attempt, Outcome, ResultRecord
from loadkit.sinks.records import RecordsWriter

from .runs import ROOT

OPUS_HEADERS = {
    "anthropic-ratelimit-requests-limit": "3333",
    "anthropic-ratelimit-input-tokens-limit": "2345678",
    "anthropic-ratelimit-output-tokens-limit": "234567",
    "anthropic-ratelimit-tokens-limit": "234567",
}
FAST_HEADERS = {
    "anthropic-fast-input-tokens-limit": "1357913",
    "anthropic-fast-output-tokens-limit": "45678",
}


def _lognormal(rng: random.Random, sigma: float) -> float:
    return math.exp(rng.gauss(-sigma * sigma / 2, sigma))


def synthetic(
    rng: random.Random,
    speed: str,
    sizes: list[int],
    n: int,
    base_ms: float = 333.0,
    prefill: float = 12_345.0,
    decode: float = 77.0,
    speedup: tuple[float, float] = (2.1, 0.1),
    cache_ms_per_token: float = 0.0,
    cache_reads: tuple[int, ...] = (0,),
    model: str = "claude-opus-4-6",
    headers: dict[str, str] | None = None,
) -> list[ResultRecord]:
    records = []
    for _ in range(n):
        tokens, reads = rng.choice(sizes), rng.choice(cache_reads)
        ttft_ms = (base_ms + tokens * 1000 / prefill) * _lognormal(rng, 0.05)
        ttft_ms += cache_ms_per_token * reads
        rate = decode * _lognormal(rng, 0.04)
        if speed == "fast":
            rate *= rng.gauss(*speedup)
        output = 200
        t_send = 10**12 + rng.randrange(10**9)
        t_first = t_send + int(ttft_ms * 1e6)
        record = ResultRecord(
            model=model,
            speed=speed,
            scenario="synthetic",
            prompt_tokens_target=tokens,
            max_tokens=output,
            t_send=t_send,
            t_first_token=t_first,
            t_last_token=t_first + int((output - 1) / rate * 1e9),
            t_end=t_first + int((output - 1) / rate * 1e9),
            outcome=Outcome.OK,
            served_speed=speed,
            input_tokens=tokens,
            output_tokens=output,
            cache_read_input_tokens=reads,
            rate_limits=dict(headers if headers is not None else OPUS_HEADERS)
            | (FAST_HEADERS if speed == "fast" else {}),
        )
        record.attempts.append(Attempt(speed=speed, t_send=t_send, status=200))
        records.append(record)
    return records


def write(path: Path, records: list[ResultRecord]) -> Path:
    writer = RecordsWriter(path, "synthetic-run", "local")
    for record in records:
        writer.add(record)
    stats = writer.close()
    assert stats.written == len(records) and not stats.dropped
    return path


def within(estimate: Estimate | None, truth: float, sds: float = 4.0) -> bool:
    """The truth lies within ``sds`` of the estimate's own standard errors."""
    assert estimate is not None and estimate.stderr is not None
    return abs(estimate.value - truth) <= sds * estimate.stderr


def test_parameters_come_back_within_their_standard_errors(tmp_path: Path) -> None:
    rng = random.Random(5)
    sizes = [200, 800, 1500, 3000, 5000]
    records = synthetic(rng, "standard", sizes, 400) + synthetic(rng, "fast", sizes, 400)
    calibration = calibrate([write(tmp_path / "r.jsonl", records)])
    (opus,) = calibration.models
    assert opus.ttft is not None and opus.decode is not None
    assert within(opus.ttft.base_ms, 333)
    assert within(opus.ttft.prefill_tokens_per_s, 12_345)
    assert within(opus.ttft.jitter, 0.05)
    assert within(opus.decode.tokens_per_s, 77)
    assert within(opus.decode.jitter, 0.04)
    assert within(opus.fast_multiplier, 2.1)
    assert within(opus.fast_spread, 0.1)
    # standard errors that say something: a few percent here, not 0 and not the value
    assert 0.002 < opus.ttft.prefill_tokens_per_s.stderr / 12_345 < 0.1  # type: ignore[operator]
    assert calibration.warnings == []
    # the limits, exactly, and the document loads as the emulator loads it
    assert calibration.rate_limits == {
        "opus": {
            "requests_per_minute": 3333,
            "input_tokens_per_minute": 2_345_678,
            "output_tokens_per_minute": 234_567,
        }
    }
    assert calibration.fast_mode == {
        "input_tokens_per_minute": 1_357_913,
        "output_tokens_per_minute": 45_678,
    }
    out = tmp_path / "b.yaml"
    out.write_text(config_document(calibration, EmulatorConfig(), None, ["r.jsonl"]))
    config = load_config(out)
    profile = config.models["claude-opus-4-6"]
    assert profile.prefill_tokens_per_s == pytest.approx(12_345, rel=0.05)
    assert profile.fast_decode_multiplier == pytest.approx(2.1, rel=0.03)
    assert config.rate_limits["opus"].requests_per_minute == 3333
    assert config.fast_mode.output_tokens_per_minute == 45_678
    assert config.models["claude-haiku-4-5"] == EmulatorConfig().models["claude-haiku-4-5"]


def test_cache_reads_get_their_own_coefficient(tmp_path: Path) -> None:
    rng = random.Random(6)
    records = synthetic(
        rng, "standard", [300, 2000, 4000], 600, cache_ms_per_token=0.02, cache_reads=(0, 8000)
    )
    calibration = calibrate([write(tmp_path / "r.jsonl", records)])
    ttft = calibration.models[0].ttft
    assert ttft is not None
    assert within(ttft.cache_read_ms_per_1k, 20.0)  # 0.02 ms per token read
    assert within(ttft.base_ms, 333)


def test_too_few_prompt_sizes_keep_the_base_prefill_rate_and_say_so(tmp_path: Path) -> None:
    rng = random.Random(7)
    records = synthetic(rng, "standard", [1000, 1200], 100)
    calibration = calibrate([write(tmp_path / "r.jsonl", records)])
    ttft = calibration.models[0].ttft
    assert ttft is not None
    assert not ttft.prefill_tokens_per_s.fitted
    assert (
        ttft.prefill_tokens_per_s.value
        == EmulatorConfig().models["claude-opus-4-6"].prefill_tokens_per_s
    )
    assert any(
        "too few or too narrow" in w and "prefill rate not fitted" in w
        for w in calibration.warnings
    )
    # no fast request: the speed-up is kept, with a warning
    assert any("no fast request completed" in w for w in calibration.warnings)
    document = config_document(calibration, EmulatorConfig(), None, ["r.jsonl"])
    assert "prefill_tokens_per_s" not in document.split("\nmodels:")[1]
    assert "# WARNING:" in document


def test_a_stalled_client_does_not_pass_for_jitter(tmp_path: Path) -> None:
    rng = random.Random(8)
    records = synthetic(rng, "standard", [300, 2000, 4000], 300)
    for record in records[:15]:  # 5%: every token read 600 ms late, at once
        record.t_first_token += 600_000_000
        record.t_last_token = record.t_end = record.t_first_token + 10_000_000
    calibration = calibrate([write(tmp_path / "r.jsonl", records)])
    fit = calibration.models[0]
    assert fit.ttft is not None and fit.decode is not None
    assert fit.ttft.outliers >= 15 and fit.decode.outliers >= 15
    assert within(fit.ttft.jitter, 0.05) and within(fit.decode.tokens_per_s, 77)


def test_models_of_one_class_with_different_limits_get_classes_of_their_own(
    tmp_path: Path,
) -> None:
    rng = random.Random(9)
    sizes = [300, 2000, 4000]
    other = {**OPUS_HEADERS, "anthropic-ratelimit-requests-limit": "50"}
    del other["anthropic-ratelimit-output-tokens-limit"]  # no header: unlimited
    records = synthetic(rng, "standard", sizes, 40, model="claude-sonnet-4-6") + synthetic(
        rng, "standard", sizes, 40, model="claude-sonnet-4-5-20250929", headers=other
    )
    calibration = calibrate([write(tmp_path / "r.jsonl", records)])
    assert calibration.model_classes == {
        "claude-sonnet-4-6": "claude-sonnet-4-6",
        "claude-sonnet-4-5": "claude-sonnet-4-5",  # the dated ID, as its alias
    }
    assert calibration.rate_limits["claude-sonnet-4-5"] == {
        "requests_per_minute": 50,
        "input_tokens_per_minute": 2_345_678,
        "output_tokens_per_minute": None,
    }
    assert any("report different limits" in w for w in calibration.warnings)
    document = config_document(calibration, EmulatorConfig(), None, ["r.jsonl"])
    config = config_from_mapping(yaml.safe_load(document), "b")
    assert config.models["claude-sonnet-4-5"].rate_limit_class == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "r.jsonl:2: not JSON"),
        ("[1, 2]", "r.jsonl:2: not a JSON object"),
        ('{"model": "claude-opus-4-6"}', "r.jsonl:2: no field 'speed'"),
    ],
)
def test_bad_lines_are_named_by_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path / "r.jsonl", synthetic(random.Random(1), "standard", [300], 1))
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(CalibrateError, match=re.escape(expected)):
        calibrate([path])


def test_a_field_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", synthetic(random.Random(1), "standard", [300], 1))
    data: dict[str, Any] = json.loads(path.read_text())
    data["t_send"] = "soon"
    path.write_text(json.dumps(data) + "\n")
    expected = "r.jsonl:1: field 't_send' is str, not int"
    with pytest.raises(CalibrateError, match=re.escape(expected)):
        calibrate([path])


def test_the_command_refuses_records_it_cannot_use_with_exit_code_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    failed = synthetic(random.Random(1), "standard", [300], 3)
    for record in failed:
        record.outcome = Outcome.RATE_LIMITED
    cases = {
        str(tmp_path / "missing.jsonl"): "cannot read records",
        str(empty): "no records in",
        str(write(tmp_path / "failed.jsonl", failed)): "none of the 3 records completed",
    }
    for path, message in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "loadkit", "calibrate", path, "-o", str(tmp_path / "b.yaml")],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("loadkit calibrate: ") and message in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "b.yaml").exists()
