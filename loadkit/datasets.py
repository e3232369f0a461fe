"""Prompt datasets: JSONL files of conversations a workload draws its prompts from, weighted.

Each line of a dataset file is one prompt: ``{"messages": [...], "system": optional}``. The
messages alternate user / assistant, start and end with the user, and hold a non-empty string
or a list of text blocks; ``system`` is a string or a list of text blocks. Lines are checked
when the workload is loaded: an error names the file, the line and the field.

How datasets mix with the workload: they **replace** its synthetic prompts. Each request
still draws its model, speed, ``max_tokens`` and output target from the model mix; its prompt
is drawn from a dataset chosen by weight, then uniformly within that dataset. A workload with
datasets may not set ``prompt_tokens`` (it would not be used).

Files are read by the process that loads the workload (the master, or a local runner) and
their prompts travel inside the workload (``DatasetSource.prompts``) in the run's plan: a
worker needs no copy of the files, and the workload's hash covers the prompts it used.

Sizes: each process that sends counts every distinct prompt once per model of the mix with
the target's ``count_tokens`` at start (``DatasetPicker``); that count, with the run's shared
system prefix, is the request's ``prompt_tokens_target``. To keep that start bounded, a
workload's datasets may hold at most ``MAX_PROMPTS`` prompts in all and a file at most
``MAX_FILE_BYTES``; a larger one is refused with a message saying so (sample it first).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import loadkit
from loadkit.yamlfiles import read_text

MAX_PROMPTS = 1000
MAX_FILE_BYTES = 8 << 20
MAX_WEIGHT = 1e9

CountTokens = Callable[[str, list[dict[str, Any]], Any], int]


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file, the line and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CacheControl(_Strict):
    type: Literal["ephemeral"] = "ephemeral"
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _not_blank(self) -> TextBlock:
        if not self.text.strip():
            raise ValueError("text must hold more than white space")
        return self


def _content_ok(content: str | list[TextBlock], field: str) -> None:
    if isinstance(content, str) and not content.strip():
        raise ValueError(f"{field}: must hold more than white space")
    if isinstance(content, list) and not content:
        raise ValueError(f"{field}: must hold at least one block")


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]

    @model_validator(mode="after")
    def _check(self) -> Message:
        _content_ok(self.content, "content")
        return self


class Prompt(_Strict):
    """One line of a dataset."""

    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None

    @model_validator(mode="after")
    def _check(self) -> Prompt:
        for i, message in enumerate(self.messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if message.role != expected:
                raise ValueError(
                    f"messages.{i}.role: {message.role!r} where {expected!r} was expected "
                    "(roles alternate, starting with user)"
                )
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must be the user's (it is answered)")
        if self.system is not None:
            _content_ok(self.system, "system")
        return self

    def request_messages(self) -> list[dict[str, Any]]:
        """The messages as the SDK takes them."""
        return [m.model_dump(mode="json", exclude_none=True) for m in self.messages]

    def request_system(self) -> str | list[dict[str, Any]] | None:
        if isinstance(self.system, list):
            return [b.model_dump(mode="json", exclude_none=True) for b in self.system]
        return self.system


class DatasetSource(_Strict):
    """A workload's ``datasets`` entry: a JSONL file, its weight and name (default: the
    file's stem). ``prompts`` holds the file's lines once loaded (or prompts given inline)."""

    path: str | None = None
    name: str = Field(default="", pattern=r"^$|^[A-Za-z0-9_.-]+$")
    weight: Annotated[float, Field(ge=0, le=MAX_WEIGHT)] = 1.0
    prompts: list[Prompt] | None = Field(default=None, min_length=1, max_length=MAX_PROMPTS)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("path"), str):
            return {**data, "name": Path(data["path"]).stem}
        return data

    @model_validator(mode="after")
    def _check(self) -> DatasetSource:
        if self.path is None and self.prompts is None:
            raise ValueError("a dataset needs a path (a JSONL file) or prompts")
        if not self.name:
            raise ValueError("a dataset given inline needs a name")
        return self


def check_sources(sources: Sequence[DatasetSource]) -> None:
    """Workload-level checks: distinct names, a positive total weight, the prompt cap."""
    if not sources:
        return
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"datasets: the name {name!r} is used twice (give each a name)")
    if sum(s.weight for s in sources) <= 0:
        raise ValueError("datasets: weights sum to zero")
    _check_total(sources)


def _check_total(sources: Sequence[DatasetSource]) -> None:
    total = sum(len(s.prompts or ()) for s in sources)
    if total > MAX_PROMPTS:
        raise ValueError(
            f"datasets: {total} prompts in all; at most {MAX_PROMPTS} (each is counted with "
            "count_tokens per model at the start of a run): sample the files down"
        )


def resolve(path: str, workload_file: Path | None) -> Path:
    """A dataset's path: absolute, else relative to the workload file, the working
    directory or the loadkit checkout (for the shipped files), the first that exists."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return given
    candidates = [given, Path(loadkit.__file__).resolve().parent.parent / given]
    if workload_file is not None:
        candidates.insert(0, workload_file.resolve().parent / given)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def read_dataset(path: Path) -> list[Prompt]:
    """Every line of a JSONL dataset, checked; ``DatasetError`` naming file, line and field."""
    hint = f"; sample it down (at most {MAX_PROMPTS} prompts are used in all)"
    text = read_text(path, "dataset", DatasetError, MAX_FILE_BYTES, hint)
    prompts: list[Prompt] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(prompts) == MAX_PROMPTS:
            raise DatasetError(
                f"dataset {path}: more than {MAX_PROMPTS} prompts (each is counted with "
                "count_tokens per model at the start of a run): sample it down"
            )
        prompts.append(_parse_line(line, path, number))
    if not prompts:
        raise DatasetError(f"dataset {path}: empty (one JSON object per line expected)")
    return prompts


def _parse_line(line: str, path: Path, number: int) -> Prompt:
    where = f"dataset {path}, line {number}"
    try:
        data = json.loads(line)
    except ValueError as err:
        raise DatasetError(f"{where}: not JSON ({err})") from None
    except RecursionError:
        raise DatasetError(f"{where}: nested too deeply") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a JSON object with 'messages'")
    try:
        return Prompt.model_validate(data)
    except ValidationError as err:
        raise DatasetError(f"{where}: {_describe(err)}") from None


def _describe(err: ValidationError) -> str:
    """The deepest problem (with content a string or blocks, the one of the form given),
    its field path without pydantic's union tags."""
    errors = err.errors()
    first = max(errors, key=lambda e: len(e["loc"]))
    parts = [str(p) for p in first["loc"] if isinstance(p, int) or not _is_tag(p)]
    field = ".".join(parts)
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{field + ': ' if field else ''}{message}{more}"


def _is_tag(part: str) -> bool:
    return part == "str" or "[" in part


def load_sources(
    sources: Sequence[DatasetSource], workload_file: Path | None
) -> list[DatasetSource]:
    """``sources`` with every file's prompts read in (inline prompts are kept)."""
    loaded = []
    for source in sources:
        if source.prompts is None and source.path is not None:
            prompts = read_dataset(resolve(source.path, workload_file))
            source = source.model_copy(update={"prompts": prompts})
        loaded.append(source)
    try:
        _check_total(loaded)
    except ValueError as err:
        raise DatasetError(str(err)) from None
    return loaded


def dataset_names(workload: dict[str, Any]) -> list[str]:
    """The dataset names of a workload as the run plan carries it, in workload order."""
    return [str(d.get("name", "")) for d in workload.get("datasets") or ()]


def with_prefix(prefix: Any, system: str | list[dict[str, Any]] | None) -> Any:
    """The run's shared system prefix (blocks, or None) followed by a prompt's own system."""
    if prefix is None:
        return system
    if system is None:
        return prefix
    own = [{"type": "text", "text": system}] if isinstance(system, str) else system
    return [*prefix, *own]


@dataclass(frozen=True, slots=True)
class Chosen:
    """A prompt drawn for one request."""

    dataset: str
    index: int  # the dataset's position in the workload
    messages: list[dict[str, Any]]
    system: Any
    tokens: int  # count_tokens of messages and system for the request's model


@dataclass(slots=True)
class _Entry:
    messages: list[dict[str, Any]]
    system: Any
    tokens: dict[str, int]  # by model


class DatasetPicker:
    """Draws dataset prompts: a dataset by weight, then a prompt uniformly.

    At construction every distinct prompt is counted once per model (``count_tokens``), with
    the run's system prefix for that model (``prefix_for``).
    """

    def __init__(
        self,
        sources: Sequence[DatasetSource],
        models: Sequence[str],
        count_tokens: CountTokens,
        prefix_for: Callable[[str], Any],
        rng: random.Random,
    ) -> None:
        self.rng = rng
        self.names = [s.name for s in sources]
        self._index = {name: i for i, name in enumerate(self.names)}
        counted: dict[tuple[str, str], int] = {}
        self._datasets: list[tuple[int, list[_Entry]]] = []
        weights: list[float] = []
        for i, source in enumerate(sources):
            if source.prompts is None:
                raise DatasetError(f"dataset {source.name}: its prompts were not loaded")
            if source.weight <= 0:
                continue
            entries = []
            for prompt in source.prompts:
                messages, own = prompt.request_messages(), prompt.request_system()
                key = json.dumps([messages, own], sort_keys=True)
                tokens = {}
                for model in models:
                    system = with_prefix(prefix_for(model), own)
                    if (key, model) not in counted:
                        counted[(key, model)] = count_tokens(model, messages, system)
                    tokens[model] = counted[(key, model)]
                entries.append(_Entry(messages, own, tokens))
            self._datasets.append((i, entries))
            weights.append(source.weight)
        self.counted = len(counted)  # count_tokens calls made
        self._weights = weights
        self._prefix_for = prefix_for

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    def largest(self, model: str) -> int:
        return max(e.tokens[model] for _, entries in self._datasets for e in entries)

    def draw(self, model: str) -> Chosen:
        rng = self.rng
        index, entries = rng.choices(self._datasets, weights=self._weights)[0]
        entry = entries[rng.randrange(len(entries))]
        return Chosen(
            dataset=self.names[index],
            index=index,
            messages=entry.messages,
            system=with_prefix(self._prefix_for(model), entry.system),
            tokens=entry.tokens[model],
        )
