"""Numeric distributions described in YAML (a leaf module shared by the emulator and the harness).

Each distribution is a small pydantic model with a ``kind`` discriminator and a ``sample``
method that draws an integer from a ``random.Random``. Bounds are validated when the model is
built, so a bad file fails at load time with the field named.

Every number is finite (``.inf`` and ``.nan`` are refused) and bounded, so that no draw can
overflow: values, means, medians and standard deviations are at most ``MAX_VALUE`` (10^9),
a log-normal's sigma at most ``MAX_SIGMA`` (10) and a bucket's weight at most ``MAX_WEIGHT``
(10^9). What a draw means (tokens of a prompt, of a reply) is bounded by the file that uses
the distribution; ``highest`` says how large a draw can be (None: no ``max`` was given).
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_VALUE = 1_000_000_000
MAX_SIGMA = 10.0
MAX_WEIGHT = 1e9


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Fixed(_Base):
    kind: Literal["fixed"] = "fixed"
    value: int = Field(ge=0, le=MAX_VALUE)

    def sample(self, rng: random.Random) -> int:
        return self.value

    @property
    def mean(self) -> float:
        return float(self.value)

    @property
    def lowest(self) -> int:
        return self.value

    @property
    def highest(self) -> int | None:
        return self.value


class Uniform(_Base):
    kind: Literal["uniform"] = "uniform"
    min: int = Field(ge=0, le=MAX_VALUE)
    max: int = Field(ge=0, le=MAX_VALUE)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.min, self.max)

    @property
    def mean(self) -> float:
        return (self.min + self.max) / 2

    @property
    def lowest(self) -> int:
        return self.min

    @property
    def highest(self) -> int | None:
        return self.max


class _Clipped(_Base):
    min: int = Field(default=0, ge=0, le=MAX_VALUE)
    max: int | None = Field(default=None, ge=0, le=MAX_VALUE)

    @model_validator(mode="after")
    def _ordered(self) -> _Clipped:
        if self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def lowest(self) -> int:
        return self.min

    @property
    def highest(self) -> int | None:
        return self.max

    def _clip(self, x: float) -> int:
        value = max(self.min, round(x))
        return value if self.max is None else min(self.max, value)


class Normal(_Clipped):
    kind: Literal["normal"] = "normal"
    mean_value: float = Field(alias="mean", gt=0, le=MAX_VALUE)
    stddev: float = Field(ge=0, le=MAX_VALUE)

    def sample(self, rng: random.Random) -> int:
        return self._clip(rng.gauss(self.mean_value, self.stddev))

    @property
    def mean(self) -> float:
        return self.mean_value


class LogNormal(_Clipped):
    """Log-normal given by its median and the sigma of the underlying normal."""

    kind: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0, le=MAX_VALUE)
    sigma: float = Field(ge=0, le=MAX_SIGMA)

    def sample(self, rng: random.Random) -> int:
        return self._clip(rng.lognormvariate(math.log(self.median), self.sigma))

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)


class Bucket(_Base):
    value: int = Field(ge=0, le=MAX_VALUE)
    weight: float = Field(ge=0, le=MAX_WEIGHT)


class Buckets(_Base):
    kind: Literal["buckets"] = "buckets"
    buckets: list[Bucket] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive_weight(self) -> Buckets:
        if sum(b.weight for b in self.buckets) <= 0:
            raise ValueError("bucket weights sum to zero")
        return self

    def sample(self, rng: random.Random) -> int:
        return rng.choices(
            [b.value for b in self.buckets], weights=[b.weight for b in self.buckets]
        )[0]

    @property
    def lowest(self) -> int:
        return min(b.value for b in self.buckets if b.weight > 0)

    @property
    def highest(self) -> int | None:
        return max(b.value for b in self.buckets if b.weight > 0)

    @property
    def mean(self) -> float:
        total = sum(b.weight for b in self.buckets)
        return sum(b.value * b.weight for b in self.buckets) / total


Distribution = Annotated[
    Fixed | Uniform | Normal | LogNormal | Buckets, Field(discriminator="kind")
]
