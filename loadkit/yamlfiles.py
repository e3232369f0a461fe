"""Reading YAML files that pydantic then validates, with errors that name file and field.

A leaf module shared by the emulator's config and the harness's workload files. Whatever the
file holds (binary data, text that is not UTF-8, gigabytes, YAML nested past Python's
recursion limit), reading it gives ``error(message)`` naming the file, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

MAX_FILE_BYTES = 10 << 20  # 10 MiB: far more than any workload or emulator config needs


def read_text(
    path: str | Path, kind: str, error: type[Exception], most: int = MAX_FILE_BYTES, hint: str = ""
) -> str:
    """The UTF-8 text of ``path`` (at most ``most`` bytes); ``error(message)`` naming the file
    if it cannot be read, is larger (``hint`` says what to do then) or is not text."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(most + 1)
    except OSError as err:
        raise error(f"cannot read {kind} {path}: {err.strerror or err}") from None
    if len(data) > most:
        raise error(f"cannot read {kind} {path}: larger than {most >> 20} MiB{hint}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(
            f"cannot read {kind} {path}: not UTF-8 text (byte 0x{data[err.start]:02x} at "
            f"offset {err.start}); is it a binary file?"
        ) from None


def read_yaml(path: str | Path, kind: str, error: type[Exception]) -> Any:
    """The parsed content of ``path``; ``error(message)`` if it cannot be read or parsed."""
    path = Path(path)
    text = read_text(path, kind, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"invalid {kind} {path}: not valid YAML: {err}") from None
    except RecursionError:
        raise error(f"invalid {kind} {path}: nested too deeply") from None


def describe_validation_error(err: ValidationError, kind: str, source: str) -> str:
    """One line per problem: the dotted path of the field, then what is wrong with it.

    A check of the whole file (a model validator, whose location is empty) names its fields
    in its own message.
    """
    lines = [f"invalid {kind} {source}:"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    return "\n".join(lines)
