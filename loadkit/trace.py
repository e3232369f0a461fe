"""Request traces: what to send and when, read from a JSON Lines file and checked in full.

Two formats, told apart per file by the first entry's fields (or named):

- loadkit's own (``timestamp_ms`` on every line): ``timestamp_ms`` (from the trace's start),
  ``model``, ``speed`` (``standard``), either ``input_tokens`` (synthetic text of that size, the
  cached prefix included) or ``messages`` (sent as they are, with ``system`` if given),
  ``max_tokens``, and optionally ``output_tokens`` (the output length asked for),
  ``session_id``, and ``prefix_id`` with ``prefix_tokens`` (entries with the same id share one
  cached system prefix, text made from the id).
- the Mooncake trace as NVIDIA AIPerf reads it (``--custom-dataset-type mooncake_trace``; its
  ``MooncakeTrace`` model in ``src/aiperf/dataset/loader/models.py``): ``timestamp`` (ms),
  ``input_length``, ``output_length`` (AIPerf sends it as ``max_tokens``) and ``hash_ids``:
  each id one block of ``block_size`` tokens (512 in the Mooncake traces), the last block
  holding the rest of ``input_length`` (more than 0 and at most ``block_size``, as AIPerf's
  ``PromptGenerator._build_token_sequence`` requires); equal ids are the same text, so
  entries whose ids begin alike share a prefix. ``session_id`` is read too. The format names
  no model or speed: they come from the caller (the run's options).

Prompt caching (platform.claude.com/docs/en/build-with-claude/prompt-caching, as of 2026-11):
only a prefix ending at a ``cache_control`` breakpoint is written, at most 4 breakpoints per
request, and a prefix shorter than the model's minimum is not cached. So for ``hash_ids``
the breakpoints are chosen from the whole trace: after every block where an entry's prefix
stops being shared with as many other entries (a branch point of the trace's prefix tree),
when that prefix is long enough for the model; of more than 4, the shallowest (the prefix
most entries share) and the 3 deepest (the longest reads) are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loadkit.catalog import MODELS, SNAPSHOTS, model_info
from loadkit.workload import MAX_CONTEXT_TOKENS, MAX_OUTPUT_TOKENS

TraceFormat = Literal["loadkit", "mooncake"]
FORMATS: tuple[str, ...] = ("auto", "loadkit", "mooncake")
MOONCAKE_BLOCK_SIZE = 512
MAX_BREAKPOINTS = 4
MAX_TIMESTAMP_MS = 366 * 86_400_000.0  # a year: a longer trace is a unit mistake


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the file, the line and the field."""


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


def _fast_offered(model: str, speed: str) -> None:
    info = model_info(model)
    if speed == "fast" and info is not None and not info.fast_supported:
        offered = ", ".join(sorted(m for m, i in MODELS.items() if i.fast_supported))
        raise ValueError(f"speed fast: fast mode is offered on {offered} only, not {model}")


class LoadkitLine(_Line):
    timestamp_ms: float = Field(ge=0, le=MAX_TIMESTAMP_MS)
    model: str
    speed: Literal["standard", "fast"] = "standard"
    input_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    system: str | list[dict[str, Any]] | None = None
    max_tokens: int = Field(ge=1, le=MAX_OUTPUT_TOKENS)
    output_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    session_id: str | None = Field(default=None, min_length=1, max_length=256)
    prefix_id: str | None = Field(default=None, min_length=1, max_length=256)
    prefix_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)

    @field_validator("model")
    @classmethod
    def _known(cls, model: str) -> str:
        if model_info(model) is None:
            known = ", ".join(sorted([*MODELS, *SNAPSHOTS]))
            raise ValueError(f"unknown model {model!r} (known: {known})")
        return model

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, message in enumerate(messages or []):
            if message.get("role") not in ("user", "assistant") or "content" not in message:
                raise ValueError(f"message {i} needs a role (user or assistant) and a content")
        return messages

    @model_validator(mode="after")
    def _check(self) -> LoadkitLine:
        _fast_offered(self.model, self.speed)
        if (self.input_tokens is None) == (self.messages is None):
            raise ValueError("give either input_tokens or messages (exactly one of them)")
        if self.system is not None and self.messages is None:
            raise ValueError("system: only with messages (input_tokens makes its own prompt)")
        if (self.prefix_id is None) != (self.prefix_tokens is None):
            raise ValueError("prefix_id and prefix_tokens go together")
        if self.prefix_tokens is not None:
            if self.input_tokens is None:
                raise ValueError("prefix_id: only with input_tokens")
            if self.prefix_tokens >= self.input_tokens:
                raise ValueError(
                    f"prefix_tokens ({self.prefix_tokens}) must be less than input_tokens "
                    f"({self.input_tokens}), which count the prefix too"
                )
        if self.output_tokens is not None and self.output_tokens > self.max_tokens:
            raise ValueError(
                f"output_tokens ({self.output_tokens}) is above max_tokens ({self.max_tokens}), "
                "its cap"
            )
        return self


class MooncakeLine(_Line):
    timestamp: float = Field(ge=0, le=MAX_TIMESTAMP_MS)
    input_length: int = Field(ge=1, le=MAX_CONTEXT_TOKENS)
    output_length: int = Field(ge=1, le=MAX_OUTPUT_TOKENS)
    hash_ids: list[int] = Field(default_factory=list)
    session_id: str | None = Field(default=None, min_length=1, max_length=256)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One request of a trace, as the replay sends it."""

    line: int  # in the file, from 1
    offset_ms: float  # from the trace's first entry
    model: str
    speed: str
    max_tokens: int
    output_target: int = 0  # 0: none asked
    session_id: str = ""
    input_tokens: int = 0  # synthetic prompt's size (0 with messages)
    messages: list[dict[str, Any]] | None = None
    system: Any = None
    prefix_id: str = ""
    prefix_tokens: int = 0
    hash_ids: tuple[int, ...] = ()
    last_block_tokens: int = 0  # of the last hash block (the others are full)
    breakpoints: tuple[int, ...] = ()  # numbers of hash blocks after which cache_control goes


@dataclass(frozen=True)
class Trace:
    path: str
    format: TraceFormat
    entries: list[TraceEntry]  # in the order they are sent
    block_size: int = MOONCAKE_BLOCK_SIZE
    digest: str = ""  # sha256 of the file: every process must replay the same one
    models: tuple[str, ...] = field(default=())

    @property
    def span_ms(self) -> float:
        return self.entries[-1].offset_ms - self.entries[0].offset_ms

    @property
    def period_ms(self) -> float:
        """The time from one pass's start to the next, looping: the span from the first
        entry to the last plus one mean gap, so that a steady trace stays steady (0 for a
        trace whose entries all start at once: it cannot loop)."""
        count = len(self.entries)
        return self.span_ms * count / (count - 1) if count > 1 else 0.0


def _where(path: str, line: int, err: ValidationError) -> str:
    problems = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(
            f"{path}:{line}: {where}: {message}" if where else f"{path}:{line}: {message}"
        )
    return "\n".join(problems)


def detect_format(first: dict[str, Any], path: str, line: int) -> TraceFormat:
    if "timestamp_ms" in first:
        return "loadkit"
    if "input_length" in first or "hash_ids" in first or "timestamp" in first:
        return "mooncake"
    raise TraceError(
        f"{path}:{line}: cannot tell the trace format: a loadkit trace has timestamp_ms, a "
        "Mooncake trace timestamp and input_length (or give --trace-format)"
    )


def _read_lines(path: Path) -> tuple[bytes, list[tuple[int, dict[str, Any]]]]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TraceError(f"cannot read the trace {path}: {err.strerror or err}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise TraceError(f"{path}:{number}: not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise TraceError(f"{path}:{number}: expected a JSON object, not {type(data).__name__}")
        out.append((number, data))
    if not out:
        raise TraceError(f"{path}: the trace has no entries")
    return raw, out


def _final_block(line: MooncakeLine, block_size: int) -> int:
    """Tokens of the last hash block (AIPerf's rule: more than 0, at most a block)."""
    return line.input_length - (len(line.hash_ids) - 1) * block_size


def _prefix_keys(entry: TraceEntry, block_size: int) -> list[int]:
    """One key per block prefix of the entry: equal keys, equal text. A short last block is
    not the same text as the full block of the same id (it is only its beginning)."""
    keys, key = [], 0
    count = len(entry.hash_ids)
    for i, block in enumerate(entry.hash_ids):
        short = i == count - 1 and entry.last_block_tokens < block_size
        key = hash((key, block, entry.last_block_tokens if short else -1))
        keys.append(key)
    return keys


def choose_breakpoints(
    entries: list[TraceEntry], block_size: int, min_tokens: dict[str, int]
) -> list[TraceEntry]:
    """The entries with their cache breakpoints (see the module's docstring)."""
    keyed = [_prefix_keys(e, block_size) for e in entries]
    sharing: Counter[int] = Counter(k for keys in keyed for k in keys)
    out = []
    for entry, keys in zip(entries, keyed, strict=True):
        points = []
        for k, key in enumerate(keys, start=1):
            shared = sharing[key]
            if shared < 2 or (k < len(keys) and sharing[keys[k]] == shared):
                continue  # not shared, or shared as widely one block further
            tokens = (k - 1) * block_size + (
                entry.last_block_tokens if k == len(keys) else block_size
            )
            if tokens >= min_tokens.get(entry.model, 1024):
                points.append(k)
        if len(points) > MAX_BREAKPOINTS:
            points = [points[0], *points[-(MAX_BREAKPOINTS - 1) :]]
        out.append(replace(entry, breakpoints=tuple(points)))
    return out


def _loadkit_entry(number: int, line: LoadkitLine) -> TraceEntry:
    return TraceEntry(
        line=number,
        offset_ms=line.timestamp_ms,
        model=line.model,
        speed=line.speed,
        max_tokens=line.max_tokens,
        output_target=line.output_tokens or 0,
        session_id=line.session_id or "",
        input_tokens=line.input_tokens or 0,
        messages=line.messages,
        system=line.system,
        prefix_id=line.prefix_id or "",
        prefix_tokens=line.prefix_tokens or 0,
    )


def _mooncake_entry(
    path: str, number: int, line: MooncakeLine, model: str, speed: str, block_size: int
) -> TraceEntry:
    last = 0
    if line.hash_ids:
        last = _final_block(line, block_size)
        if not 0 < last <= block_size:
            raise TraceError(
                f"{path}:{number}: hash_ids: {len(line.hash_ids)} blocks of {block_size} "
                f"tokens do not fit input_length {line.input_length} (the last block would "
                f"hold {last} tokens; it must hold 1 to {block_size})"
            )
    return TraceEntry(
        line=number,
        offset_ms=line.timestamp,
        model=model,
        speed=speed,
        max_tokens=line.output_length,
        output_target=line.output_length,
        session_id=line.session_id or "",
        input_tokens=line.input_length,
        hash_ids=tuple(line.hash_ids),
        last_block_tokens=last,
    )


def load_trace(
    path: str | Path,
    trace_format: str = "auto",
    model: str = "",
    speed: str = "standard",
    block_size: int = MOONCAKE_BLOCK_SIZE,
) -> Trace:
    """Read and check a whole trace; TraceError names the file, line and field of a problem.

    ``model`` and ``speed`` are those of Mooncake entries (which name none)."""
    path = Path(path)
    name = str(path)
    if trace_format not in FORMATS:
        raise TraceError(f"unknown trace format {trace_format!r} (one of {', '.join(FORMATS)})")
    if not 1 <= block_size <= MAX_CONTEXT_TOKENS:
        raise TraceError(f"the block size must be from 1 to {MAX_CONTEXT_TOKENS}, not {block_size}")
    raw, lines = _read_lines(path)
    number, first = lines[0]
    chosen: TraceFormat = (
        detect_format(first, name, number) if trace_format == "auto" else trace_format  # type: ignore[assignment]
    )
    entries: list[TraceEntry] = []
    if chosen == "mooncake" and model_info(model) is None:
        raise TraceError(f"{name}: a Mooncake trace names no model, and {model!r} is not one")
    if chosen == "mooncake":
        try:
            _fast_offered(model, speed)
        except ValueError as err:
            raise TraceError(f"{name}: {err}") from None
    for number, data in lines:
        try:
            if chosen == "loadkit":
                entries.append(_loadkit_entry(number, LoadkitLine.model_validate(data)))
            else:
                line = MooncakeLine.model_validate(data)
                entries.append(_mooncake_entry(name, number, line, model, speed, block_size))
        except ValidationError as err:
            raise TraceError(_where(name, number, err)) from None
    entries.sort(key=lambda e: e.offset_ms)  # stable: equal times keep the file's order
    start = entries[0].offset_ms
    entries = [replace(e, offset_ms=e.offset_ms - start) for e in entries]
    models = tuple(sorted({e.model for e in entries}))
    if chosen == "mooncake":
        minimum = {m: info.min_cacheable_tokens for m in models if (info := model_info(m))}
        entries = choose_breakpoints(entries, block_size, minimum)
    return Trace(
        path=name,
        format=chosen,
        entries=entries,
        block_size=block_size,
        digest=hashlib.sha256(raw).hexdigest(),
        models=models,
    )


def estimated_input_tokens(entry: TraceEntry) -> int:
    """The entry's input tokens, for the cost guard: given, or about 4 characters a token."""
    if entry.input_tokens:
        return entry.input_tokens
    size = len(json.dumps(entry.messages)) + len(json.dumps(entry.system))
    return max(1, math.ceil(size / 4))
