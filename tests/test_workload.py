"""Workload files: validation that names the file and field, and sampling."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadkit.workload import Sampler, WorkloadError, load_workload, parse_workload

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "workloads").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_workloads_load(path: Path) -> None:
    workload = load_workload(path)
    draw = Sampler(workload, random.Random(0)).draw()
    assert draw.max_tokens >= 1 and draw.prompt_tokens >= 0


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "t", "models": [{"model": "claude-haiku-4-5"}]}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            base(models=[{"model": "claude-imaginary-9"}]),
            "models.0: unknown model 'claude-imaginary-9'",
        ),
        (base(models=[{"model": "claude-haiku-4-5", "weight": 0}]), "models: weights sum to zero"),
        (
            base(models=[{"model": "claude-haiku-4-5", "speeds": {"standard": 0}}]),
            "speeds: weights must be >= 0 and sum to more than zero",
        ),
        (
            base(models=[{"model": "claude-sonnet-4-6", "speeds": {"fast": 1}}]),
            "does not support fast mode",
        ),
        (
            base(prompt_tokens={"kind": "uniform", "min": 10, "max": 5}),
            "min (10) is greater than max (5)",
        ),
        (base(max_tokens={"kind": "fixed", "value": 0}), "must be >= 1"),
        (base(temperature=1.5), "temperature"),
        (base(models=[]), "models"),
        (base(colour="blue"), "colour"),
        (base(prompt_tokens={"kind": "zipf"}), "prompt_tokens"),
    ],
)
def test_invalid_workloads_name_file_and_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkloadError) as caught:
        parse_workload(data, "mine.yaml")
    text = str(caught.value)
    assert "mine.yaml" in text and message in text


def test_fast_on_unsupported_model_allowed_when_errors_expected() -> None:
    workload = parse_workload(
        base(models=[{"model": "claude-sonnet-4-6", "speeds": {"fast": 1}, "expect_errors": True}]),
        "x",
    )
    assert Sampler(workload, random.Random(0)).draw().speed == "fast"


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read workload"):
        load_workload(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(WorkloadError, match=r"invalid workload .*broken\.yaml: not valid YAML"):
        load_workload(broken)


def test_sampling_follows_weights() -> None:
    workload = parse_workload(
        {
            "models": [
                {"model": "claude-opus-4-6", "weight": 3, "speeds": {"standard": 1, "fast": 1}},
                {
                    "model": "claude-haiku-4-5",
                    "weight": 1,
                    "max_tokens": {"kind": "fixed", "value": 7},
                },
            ],
            "max_tokens": {"kind": "fixed", "value": 100},
        },
        "x",
    )
    sampler = Sampler(workload, random.Random(42))
    draws = [sampler.draw() for _ in range(8000)]
    mix = Counter((d.model, d.speed) for d in draws)
    assert 0.33 < mix[("claude-opus-4-6", "fast")] / 8000 < 0.42
    assert 0.21 < mix[("claude-haiku-4-5", "standard")] / 8000 < 0.29
    assert {d.max_tokens for d in draws if d.model == "claude-haiku-4-5"} == {7}
    assert {d.max_tokens for d in draws if d.model == "claude-opus-4-6"} == {100}
