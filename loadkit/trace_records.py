"""A run's per-request records (``--records``) made into a loadkit-format trace.

Each record becomes one line: ``timestamp_ms`` from its intended start (open loop and trace
replay) or else its send, on the Unix clock (``t_* + wall_offset_ns``, so that several
processes' files merge), relative to the first; its model and speed as asked; ``input_tokens``
as the server counted them (input, cache reads and cache writes together) or, for a request
that got no usage, the size it was built for; ``max_tokens``; ``output_tokens`` the output it
got (when it completed), else its target if it had one; its ``session_id``. The prompts
themselves are not in the records: the trace asks for synthetic prompts of the same sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadkit.trace import TraceError


def _line(record: dict[str, Any], source: str, number: int) -> tuple[int, dict[str, Any]] | None:
    """(Unix ns of the start, trace line) of one record; None for one never started."""
    try:
        start = int(record.get("t_intended") or 0) or int(record.get("t_send") or 0)
        if not start:
            return None
        wall = start + int(record.get("wall_offset_ns") or 0)
        counted = sum(
            int(record.get(name) or 0)
            for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        line: dict[str, Any] = {
            "timestamp_ms": 0.0,
            "model": str(record["model"]),
            "speed": str(record.get("speed") or "standard"),
            "input_tokens": max(1, counted or int(record.get("prompt_tokens_target") or 0)),
            "max_tokens": int(record["max_tokens"]),
        }
        output = int(record.get("output_tokens") or 0) if record.get("outcome") == "ok" else 0
        output = output or int(record.get("output_target") or 0)
        if output:
            line["output_tokens"] = min(output, line["max_tokens"])
        if record.get("session_id"):
            line["session_id"] = str(record["session_id"])
    except (KeyError, TypeError, ValueError) as err:
        raise TraceError(f"{source}:{number}: not a loadkit record ({err!r})") from None
    return wall, line


def _records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as err:
        raise TraceError(f"cannot read the records {path}: {err.strerror or err}") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError as err:
                raise TraceError(f"{path}:{number}: not valid JSON: {err}") from None
            if not isinstance(data, dict):
                raise TraceError(f"{path}:{number}: expected a JSON object")
            yield number, data


def trace_from_records(paths: list[str | Path]) -> tuple[list[dict[str, Any]], int]:
    """The trace's lines, in time order, and how many records were left out (never started)."""
    timed: list[tuple[int, int, dict[str, Any]]] = []
    skipped = 0
    for path in map(Path, paths):
        for number, record in _records(path):
            found = _line(record, str(path), number)
            if found is None:
                skipped += 1
                continue
            timed.append((found[0], len(timed), found[1]))
    if not timed:
        raise TraceError(f"no started request in {', '.join(map(str, paths))}")
    timed.sort()
    first = timed[0][0]
    lines = []
    for wall, _, line in timed:
        line["timestamp_ms"] = round((wall - first) / 1e6, 3)
        lines.append(line)
    return lines, skipped


def write_trace(lines: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
