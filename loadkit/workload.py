"""Workload files: a weighted mix of models and speeds, prompt and output sizes.

A workload is validated completely when loaded, before any user starts; errors name the file
and the field. Sampling a request is a few random draws (no I/O, no tokenizer).
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadkit.catalog import MODELS
from loadkit.distributions import Distribution, Fixed
from loadkit.fallback import FallbackSettings
from loadkit.slo import SLOError, parse_slo
from loadkit.yamlfiles import describe_validation_error, read_yaml

Speed = Literal["standard", "fast"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemPrefix(_Strict):
    """A system prompt shared by every request of the run, optionally marked for caching."""

    tokens: int = Field(ge=1)
    cache: bool = True
    ttl: Literal["5m", "1h"] = "5m"


class ModelMix(_Strict):
    model: str
    weight: float = Field(default=1.0, ge=0)
    speeds: dict[Speed, float] = Field(default_factory=lambda: {"standard": 1.0})
    prompt_tokens: Distribution | None = None
    max_tokens: Distribution | None = None
    expect_errors: bool = Field(
        default=False, description="allow settings the API will refuse (e.g. fast on Sonnet)"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelMix:
        info = MODELS.get(self.model)
        if info is None:
            known = ", ".join(sorted(MODELS))
            raise ValueError(f"unknown model {self.model!r} (known: {known})")
        if any(w < 0 for w in self.speeds.values()) or sum(self.speeds.values()) <= 0:
            raise ValueError("speeds: weights must be >= 0 and sum to more than zero")
        if self.speeds.get("fast", 0) > 0 and not info.fast_supported and not self.expect_errors:
            raise ValueError(
                f"speeds: {self.model} does not support fast mode "
                "(set expect_errors: true to send it anyway and count the errors)"
            )
        return self


class Workload(_Strict):
    name: str = Field(default="workload", pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: list[ModelMix] = Field(min_length=1)
    prompt_tokens: Distribution = Field(default_factory=lambda: Fixed(value=1000))
    max_tokens: Distribution = Field(default_factory=lambda: Fixed(value=512))
    temperature: float | None = Field(default=None, ge=0, le=1)
    system_prefix: SystemPrefix | None = None
    stop_sequences: list[str] = Field(default_factory=list)
    fallback: FallbackSettings = Field(default_factory=FallbackSettings)
    slos: list[str] = Field(default_factory=list, description="SLO expressions (see loadkit.slo)")

    @model_validator(mode="after")
    def _check(self) -> Workload:
        for i, text in enumerate(self.slos):
            try:
                parse_slo(text)
            except SLOError as err:
                raise ValueError(f"slos.{i}: {err}") from None
        if sum(m.weight for m in self.models) <= 0:
            raise ValueError("models: weights sum to zero")
        for i, mix in enumerate(self.models):
            dist = mix.max_tokens or self.max_tokens
            if dist.lowest < 1:
                raise ValueError(f"models.{i}.max_tokens: can draw {dist.lowest}; must be >= 1")
        return self


class WorkloadError(ValueError):
    """A workload file that cannot be used; the message names the file and the field."""


def parse_workload(data: Any, source: str) -> Workload:
    if not isinstance(data, dict):
        raise WorkloadError(f"workload {source}: expected a mapping at the top level")
    try:
        return Workload.model_validate(data)
    except ValidationError as err:
        raise WorkloadError(describe_validation_error(err, "workload", source)) from None


def load_workload(path: str | Path) -> Workload:
    return parse_workload(read_yaml(path, "workload", WorkloadError), str(path))


@dataclass(slots=True)
class Draw:
    """One request's parameters, drawn from a workload."""

    model: str
    speed: Speed
    prompt_tokens: int
    max_tokens: int


class _Choice:
    def __init__(self, items: list[Any], weights: list[float]) -> None:
        self.items = items
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> Any:
        return self.items[bisect.bisect_right(self.cumulative, rng.random() * self.total)]


class Sampler:
    """Draws requests from a workload with its own random generator."""

    def __init__(self, workload: Workload, rng: random.Random) -> None:
        self.workload = workload
        self.rng = rng
        mixes = [m for m in workload.models if m.weight > 0]
        entries = [
            (
                m,
                _Choice(
                    [s for s, w in m.speeds.items() if w > 0],
                    [w for w in m.speeds.values() if w > 0],
                ),
            )
            for m in mixes
        ]
        self._models = _Choice(entries, [m.weight for m in mixes])

    def draw(self) -> Draw:
        rng = self.rng
        mix, speeds = self._models.pick(rng)
        speed = speeds.pick(rng)
        prompt = (mix.prompt_tokens or self.workload.prompt_tokens).sample(rng)
        max_tokens = max(1, (mix.max_tokens or self.workload.max_tokens).sample(rng))
        return Draw(mix.model, speed, prompt, max_tokens)
