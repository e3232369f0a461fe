"""Workload files: a weighted mix of models and speeds, prompt and output sizes.

A workload is validated completely when loaded, before any user starts; errors name the file
and the field. Sampling a request is a few random draws (no I/O, no tokenizer).

Bounds (every number must also be finite: ``.inf`` and ``.nan`` are refused):

- no request larger than the largest context window of the known models: the system prefix
  plus the largest prompt plus the largest ``max_tokens`` at most ``MAX_CONTEXT_TOKENS``
  (1M tokens: Claude Opus 4.6 and Sonnet 4.5/4.6 with the 1M-context beta; 200K otherwise);
- ``max_tokens`` at most ``MAX_OUTPUT_TOKENS`` (128K, Opus 4.6's maximum output; 64K on
  Sonnet 4.5 and Haiku 4.5);
- ``prompt_tokens`` and ``max_tokens`` distributions that can draw any size (``normal`` and
  ``lognormal`` without ``max``) must be given a ``max``;
- weights at most ``MAX_WEIGHT`` (10^9), ``fallback.max_wait_s`` at most
  ``MAX_FALLBACK_WAIT_S`` (3600), and the distributions' own bounds (``loadkit.distributions``);
- ``conversation``: ``turns`` from 1 to ``MAX_TURNS`` (1,000), ``think_time_ms`` and
  ``tools.latency_ms`` at most ``MAX_WAIT_MS`` (1 hour), and the longest conversation
  (system prefix, first prompt, every turn's user message and answer, tool results) within
  ``MAX_CONTEXT_TOKENS``;
- ``thinking.budget_tokens`` at least 1,024 and below every ``max_tokens`` the workload can
  draw (unless ``interleaved`` with ``tools``), not with ``temperature`` (extended thinking
  page, "Feature compatibility", as of 2026-11), and with ``tools`` only under
  ``tool_choice`` auto or none;
- ``tools``: names ``^[a-zA-Z0-9_-]{1,64}$``, unique; ``input_schema`` of type object; a
  ``tool_choice`` of type tool names one of them; ``max_calls_per_turn`` at most 100.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from loadkit.catalog import MODELS, SNAPSHOTS, model_info
from loadkit.datasets import DatasetError, DatasetSource, check_sources, load_sources
from loadkit.distributions import MAX_WEIGHT, Distribution, Fixed
from loadkit.fallback import FallbackSettings
from loadkit.slo import SLOError, parse_slo
from loadkit.toolsets import PRESETS, TOOL_RESULT_TOKENS
from loadkit.yamlfiles import describe_validation_error, read_yaml

Speed = Literal["standard", "fast"]
#: The largest context window of the known models (1M tokens with the 1M-context beta on
#: Opus 4.6 and Sonnet 4.5/4.6; 200K otherwise): input plus max_tokens of one request.
MAX_CONTEXT_TOKENS = 1_000_000
#: The largest max output of the known models (Opus 4.6: 128K; Sonnet 4.5, Haiku 4.5: 64K).
MAX_OUTPUT_TOKENS = 128_000
MAX_FALLBACK_WAIT_S = 3600.0
Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _bounded(dist: Distribution | None, most: int, what: str) -> Distribution | None:
    """``dist`` if every draw is at most ``most``, else a ValueError saying why."""
    if dist is None:
        return None
    highest = dist.highest
    if highest is None:
        raise ValueError(
            f"a {dist.kind} distribution without max can draw any size: it needs a max "
            f"(at most {most}: {what})"
        )
    if highest > most:
        raise ValueError(f"can draw {highest}; must be at most {most} ({what})")
    return dist


class _TokenBounds(_Strict):
    """The bounds of the ``prompt_tokens`` and ``max_tokens`` of a workload or a model entry."""

    @field_validator("prompt_tokens", check_fields=False)
    @classmethod
    def _prompt_bound(cls, dist: Distribution | None) -> Distribution | None:
        return _bounded(dist, MAX_CONTEXT_TOKENS, "the largest context window, in tokens")

    @field_validator("max_tokens", check_fields=False)
    @classmethod
    def _output_bound(cls, dist: Distribution | None) -> Distribution | None:
        return _bounded(dist, MAX_OUTPUT_TOKENS, "the largest max output, in tokens")


class SystemPrefix(_Strict):
    """A system prompt shared by every request of the run, optionally marked for caching."""

    tokens: int = Field(ge=1, le=MAX_CONTEXT_TOKENS)
    cache: bool = True
    ttl: Literal["5m", "1h"] = "5m"


MAX_TURNS = 1000
MAX_WAIT_MS = 3_600_000
MAX_TOOL_CALLS_PER_TURN = 100
MIN_THINKING_BUDGET = 1024


def _no_fixed_zero() -> Distribution:
    return Fixed(value=0)


class Conversation(_Strict):
    """Multi-turn sessions: each user holds one conversation of ``turns`` user messages."""

    turns: Distribution
    think_time_ms: Distribution = Field(default_factory=_no_fixed_zero)
    user_tokens: Distribution = Field(default_factory=lambda: Fixed(value=200))
    cache: bool = True  # a cache_control breakpoint on the growing conversation

    @field_validator("turns")
    @classmethod
    def _turns(cls, dist: Distribution) -> Distribution:
        if dist.lowest < 1:
            raise ValueError(f"can draw {dist.lowest} turns; a conversation has at least 1")
        return _bounded(dist, MAX_TURNS, "turns of one conversation")  # type: ignore[return-value]

    @field_validator("think_time_ms")
    @classmethod
    def _think(cls, dist: Distribution) -> Distribution:
        return _bounded(dist, MAX_WAIT_MS, "an hour, in ms")  # type: ignore[return-value]

    @field_validator("user_tokens")
    @classmethod
    def _user(cls, dist: Distribution) -> Distribution:
        return _bounded(dist, MAX_CONTEXT_TOKENS, "the largest context window, in tokens")  # type: ignore[return-value]


class Thinking(_Strict):
    """Extended thinking on every request: ``thinking: {type: enabled, budget_tokens: N}``."""

    budget_tokens: int = Field(ge=MIN_THINKING_BUDGET, le=MAX_OUTPUT_TOKENS)
    # the interleaved-thinking beta: thinking after tool results too; with tools, the budget
    # may then exceed max_tokens (extended thinking page, "Interleaved thinking")
    interleaved: bool = False


class ToolDefinition(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    input_schema: dict[str, Any]

    @field_validator("input_schema")
    @classmethod
    def _object(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError('must be a JSON Schema of "type": "object"')
        return schema


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"] = "auto"
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("a name is given with type tool, and only then")
        return self

    def param(self) -> dict[str, Any]:
        """As the API takes it."""
        out: dict[str, Any] = {"type": self.type}
        if self.name is not None:
            out["name"] = self.name
        if self.disable_parallel_tool_use:
            out["disable_parallel_tool_use"] = True
        return out


class Tools(_Strict):
    """Tools offered on every request; a ``tool_use`` answer is followed by a ``tool_result``
    after the simulated tool's ``latency_ms``."""

    definitions: list[ToolDefinition] = Field(default_factory=list)
    preset: Literal["agent"] | None = None  # loadkit.toolsets.PRESETS
    tool_choice: ToolChoice = Field(default_factory=ToolChoice)
    latency_ms: Distribution = Field(default_factory=_no_fixed_zero)
    # tool round trips after one user message before the conversation moves on
    max_calls_per_turn: int = Field(default=8, ge=1, le=MAX_TOOL_CALLS_PER_TURN)

    @field_validator("latency_ms")
    @classmethod
    def _latency(cls, dist: Distribution) -> Distribution:
        return _bounded(dist, MAX_WAIT_MS, "an hour, in ms")  # type: ignore[return-value]

    @model_validator(mode="after")
    def _check(self) -> Tools:
        if bool(self.definitions) == (self.preset is not None):
            raise ValueError("give either definitions or a preset (one of: agent)")
        names = [tool["name"] for tool in self.params()]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique: {names}")
        choice = self.tool_choice
        if choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names {choice.name!r}, not one of the tools {names}")
        return self

    def params(self) -> list[dict[str, Any]]:
        """The definitions as the API takes them."""
        if self.preset is not None:
            return [dict(tool) for tool in PRESETS[self.preset]]
        return [t.model_dump(exclude_defaults=False) for t in self.definitions]


class BoundedFallbackSettings(FallbackSettings):
    """``loadkit.fallback``'s settings, with finite numbers and a bounded wait."""

    model_config = ConfigDict(allow_inf_nan=False)

    max_wait_s: float = Field(
        default=5.0, ge=0, le=MAX_FALLBACK_WAIT_S, description="retry-then-standard's bound"
    )


def _standard_only() -> dict[Speed, float]:
    return {"standard": 1.0}


class ModelMix(_TokenBounds):
    model: str
    weight: Weight = 1.0
    speeds: dict[Speed, Weight] = Field(default_factory=_standard_only)
    prompt_tokens: Distribution | None = None
    max_tokens: Distribution | None = None
    output_tokens_target: Distribution | None = None
    expect_errors: bool = Field(
        default=False, description="allow settings the API will refuse (e.g. fast on Sonnet)"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelMix:
        info = model_info(self.model)
        if info is None:
            known = ", ".join(sorted([*MODELS, *SNAPSHOTS]))
            raise ValueError(f"unknown model {self.model!r} (known: {known})")
        if any(w < 0 for w in self.speeds.values()) or sum(self.speeds.values()) <= 0:
            raise ValueError("speeds: weights must be >= 0 and sum to more than zero")
        if self.speeds.get("fast", 0) > 0 and not info.fast_supported and not self.expect_errors:
            raise ValueError(
                f"speeds: {self.model} does not support fast mode "
                "(set expect_errors: true to send it anyway and count the errors)"
            )
        return self


def _check_datasets_and_targets(workload: Workload) -> None:
    """Datasets replace synthetic prompts; an output target stays within ``max_tokens``."""
    if workload.datasets:
        check_sources(workload.datasets)
        given = [f"models.{i}." for i, m in enumerate(workload.models) if m.prompt_tokens]
        # (not model_fields_set: the plan's copy of the workload sets every field)
        default = Workload.model_fields["prompt_tokens"].get_default(call_default_factory=True)
        if workload.prompt_tokens != default:
            given.insert(0, "")
        if given:
            raise ValueError(
                f"{given[0]}prompt_tokens: datasets replace synthetic prompts, so prompt_tokens "
                "would not be used; remove it or the datasets"
            )
    for i, mix in enumerate(workload.models):
        target = mix.output_tokens_target or workload.output_tokens_target
        if target is None:
            continue
        where = "output_tokens_target"
        if mix.output_tokens_target:
            where = f"models.{i}.{where}"
        if target.highest is None:
            raise ValueError(f"{where}: a {target.kind} distribution without max needs a max")
        if target.lowest < 1:
            raise ValueError(f"{where}: can draw {target.lowest}; must be >= 1")
        cap = (mix.max_tokens or workload.max_tokens).lowest
        if target.highest > cap:
            raise ValueError(
                f"{where}: can draw {target.highest}, above the max_tokens models.{i} can draw "
                f"({cap}): max_tokens is the cap: a target may not exceed its lowest draw"
            )


class Workload(_TokenBounds):
    name: str = Field(default="workload", pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: list[ModelMix] = Field(min_length=1)
    prompt_tokens: Distribution = Field(default_factory=lambda: Fixed(value=1000))
    max_tokens: Distribution = Field(default_factory=lambda: Fixed(value=512))
    # output tokens asked for in the prompt (loadkit.output_target); max_tokens stays the cap
    output_tokens_target: Distribution | None = None
    datasets: list[DatasetSource] = Field(default_factory=list)  # replace synthetic prompts
    temperature: float | None = Field(default=None, ge=0, le=1)
    system_prefix: SystemPrefix | None = None
    stop_sequences: list[str] = Field(default_factory=list)
    fallback: BoundedFallbackSettings = Field(default_factory=BoundedFallbackSettings)
    slos: list[str] = Field(default_factory=list, description="SLO expressions (see loadkit.slo)")
    conversation: Conversation | None = None
    thinking: Thinking | None = None
    tools: Tools | None = None

    @model_validator(mode="after")
    def _check(self) -> Workload:
        for i, text in enumerate(self.slos):
            try:
                parse_slo(text)
            except SLOError as err:
                raise ValueError(f"slos.{i}: {err}") from None
        _check_datasets_and_targets(self)
        if sum(m.weight for m in self.models) <= 0:
            raise ValueError("models: weights sum to zero")
        prefix = self.system_prefix.tokens if self.system_prefix else 0
        for i, mix in enumerate(self.models):
            dist = mix.max_tokens or self.max_tokens
            if dist.lowest < 1:
                raise ValueError(f"models.{i}.max_tokens: can draw {dist.lowest}; must be >= 1")
            prompt = mix.prompt_tokens or self.prompt_tokens
            largest = prefix + (prompt.highest or 0) + (dist.highest or 0)
            if largest > MAX_CONTEXT_TOKENS:
                raise ValueError(
                    f"models.{i}: its largest request is {largest} tokens "
                    f"(system_prefix.tokens {prefix} + prompt_tokens up to {prompt.highest} "
                    f"+ max_tokens up to {dist.highest}); the largest context window holds "
                    f"{MAX_CONTEXT_TOKENS}"
                )
        self._check_thinking()
        self._check_conversation(prefix)
        return self

    def _check_thinking(self) -> None:
        thinking = self.thinking
        if thinking is None:
            return
        if self.temperature is not None:
            raise ValueError("thinking: extended thinking does not take a temperature; remove it")
        if self.tools is not None and self.tools.tool_choice.type in ("any", "tool"):
            raise ValueError(
                f"thinking: extended thinking allows tool_choice auto or none, not "
                f"{self.tools.tool_choice.type}"
            )
        if thinking.interleaved and self.tools is not None:
            return
        for i, mix in enumerate(self.models):
            lowest = (mix.max_tokens or self.max_tokens).lowest
            if thinking.budget_tokens >= lowest:
                raise ValueError(
                    f"thinking.budget_tokens ({thinking.budget_tokens}) must be below max_tokens, "
                    f"and models.{i} can draw max_tokens {lowest}"
                )

    def _check_conversation(self, prefix: int) -> None:
        conversation = self.conversation
        if conversation is None:
            return
        turns = conversation.turns.highest or 1
        calls = self.tools.max_calls_per_turn if self.tools is not None else 0
        user = conversation.user_tokens.highest or 0
        for i, mix in enumerate(self.models):
            answer = (mix.max_tokens or self.max_tokens).highest or 0
            first = (mix.prompt_tokens or self.prompt_tokens).highest or 0
            # every answer at its largest, each tool call answered by a tool_result
            largest = (
                prefix
                + first
                + (turns - 1) * user
                + turns * answer
                + turns * calls * (answer + TOOL_RESULT_TOKENS)
            )
            if largest > MAX_CONTEXT_TOKENS:
                raise ValueError(
                    f"conversation: models.{i}'s longest conversation reaches {largest} tokens "
                    f"({turns} turns of up to {user} user tokens and {answer} answer tokens, "
                    f"{calls} tool calls per turn); the largest context window holds "
                    f"{MAX_CONTEXT_TOKENS}: fewer turns or smaller sizes"
                )


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
    """A workload file, validated, with its datasets' prompts read in."""
    workload = parse_workload(read_yaml(path, "workload", WorkloadError), str(path))
    if not workload.datasets:
        return workload
    try:
        datasets = load_sources(workload.datasets, Path(path))
        return workload.model_copy(update={"datasets": datasets})
    except DatasetError as err:
        raise WorkloadError(f"workload {path}: {err}") from None


@dataclass(slots=True)
class Draw:
    """One request's parameters, drawn from a workload."""

    model: str
    speed: Speed
    prompt_tokens: int
    max_tokens: int
    output_target: int = 0  # output tokens to ask for in the prompt (0: none)


class _Choice:
    def __init__(self, items: list[Any], weights: list[float]) -> None:
        self.items = items
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> Any:
        index = bisect.bisect_right(self.cumulative, rng.random() * self.total)
        # random() < 1, but its product with a tiny (subnormal) total can round up to it
        return self.items[min(index, len(self.items) - 1)]


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
        target = mix.output_tokens_target or self.workload.output_tokens_target
        output_target = target.sample(rng) if target is not None else 0
        return Draw(mix.model, speed, prompt, max_tokens, output_target)
