"""Reading YAML files that pydantic then validates, with errors that name file and field.

A leaf module shared by the emulator's config and the harness's workload files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def read_yaml(path: str | Path, kind: str, error: type[Exception]) -> Any:
    """The parsed content of ``path``; ``error(message)`` if it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"cannot read {kind} {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"invalid {kind} {path}: not valid YAML: {err}") from None


def describe_validation_error(err: ValidationError, kind: str, source: str) -> str:
    """One line per problem: the dotted path of the field, then what is wrong with it."""
    lines = [f"invalid {kind} {source}:"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
