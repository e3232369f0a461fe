"""Strict JSON for request bodies: UTF-8, finite numbers within 64 bits, bounded nesting.

Python's ``json`` accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf`` and integers
of any length into ints, and fails with ``RecursionError`` on deep nesting. A request with any
of these gets 400 ``invalid_request_error`` naming where the bad value is (``max_tokens``,
``messages.0.content.1.input.x``), as the API does, instead of an overflow deep inside.

The fast path costs one pass of the C decoder with three cheap hooks (floats and the rare
long integers only) and two ``bytes.count`` calls; the path to the bad value is only looked
for once the body is known to be bad.
"""

from __future__ import annotations

import json
import math
from typing import Any

from loadkit.emulator.errors import ApiError, invalid

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
DEFAULT_MAX_DEPTH = 64


class _BadNumber(Exception):
    pass


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _BadNumber
    return value


def _int(text: str) -> int:
    # len("-9223372036854775808") == 20; JSON forbids leading zeros, so longer is larger.
    if len(text) > 18 and (len(text) > 20 or not INT_MIN <= int(text) <= INT_MAX):
        raise _BadNumber
    return int(text)


def _constant(text: str) -> float:
    raise _BadNumber  # NaN, Infinity, -Infinity: not JSON


_DECODER = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_constant)


class _Bad:
    """Stands for a bad number while looking for where it is."""


_BAD = _Bad()


def _mark_float(text: str) -> Any:
    value = float(text)
    return _BAD if math.isinf(value) else value


def _mark_int(text: str) -> Any:
    if len(text) > 18 and (len(text) > 20 or not INT_MIN <= int(text) <= INT_MAX):
        return _BAD
    return int(text)


_MARKING_DECODER = json.JSONDecoder(
    parse_float=_mark_float, parse_int=_mark_int, parse_constant=lambda _: _BAD
)


def _where(path: list[str | int]) -> str:
    return ".".join(str(p) for p in path) or "(the request body)"


def _children(node: dict[str, Any] | list[Any]) -> Any:
    return iter(node.items()) if isinstance(node, dict) else enumerate(node)


def _find(value: Any, max_depth: int) -> tuple[str, list[str | int]] | None:
    """The first bad number or too-deep container, in document order (no recursion, and
    no copy of the containers' contents)."""
    if value is _BAD:
        return "number", []
    if not isinstance(value, dict | list):
        return None
    if max_depth <= 0:
        return "depth", []
    path: list[str | int] = []
    stack = [_children(value)]
    while stack:
        for key, child in stack[-1]:
            if child is _BAD:
                return "number", [*path, key]
            if isinstance(child, dict | list):
                if len(stack) >= max_depth:
                    return "depth", [*path, key]
                path.append(key)
                stack.append(_children(child))
                break
        else:
            stack.pop()
            if path:
                path.pop()
    return None


def _too_deep(path: list[str | int], max_depth: int) -> ApiError:
    return invalid(f"{_where(path)}: nested more than {max_depth} levels deep")


def parse(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The JSON value of ``raw``; ApiError 400 if it is not strict, finite, shallow JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("The request body is not valid JSON: it is not UTF-8.") from None
    try:
        value = _DECODER.decode(text)
    except _BadNumber:
        raise _bad_number(text, max_depth) from None
    except RecursionError:
        raise invalid(f"The request body is nested more than {max_depth} levels deep.") from None
    except ValueError:
        raise invalid("The request body is not valid JSON.") from None
    # A value is at most as deep as it has brackets: only a body with many is looked into.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        found = _find(value, max_depth)
        if found is not None:
            raise _too_deep(found[1], max_depth)
    return value


def _bad_number(text: str, max_depth: int) -> ApiError:
    try:
        found = _find(_MARKING_DECODER.decode(text), max_depth)
    except RecursionError:
        return invalid(f"The request body is nested more than {max_depth} levels deep.")
    except ValueError:
        return invalid("The request body is not valid JSON.")
    if found is not None and found[0] == "depth":
        return _too_deep(found[1], max_depth)
    where = _where(found[1]) if found is not None else "(the request body)"
    return invalid(
        f"{where}: Input should be a finite number within 64 bits "
        "(NaN, Infinity and larger numbers are not accepted)"
    )
