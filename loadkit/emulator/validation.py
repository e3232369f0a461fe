"""Validation of a request's method and of a Messages body's model, speed and sampling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loadkit.emulator import jsonbody
from loadkit.emulator.config import FAST_MODE_BETA
from loadkit.emulator.errors import ApiError, invalid
from loadkit.emulator.http import Request
from loadkit.emulator.job import ModelRuntime


def require_method(method: str, expected: str) -> None:
    if method != expected:
        raise ApiError(405, "invalid_request_error", f"Method {method} not allowed")


def parse_body(request: Request, max_json_depth: int) -> dict[str, Any]:
    body = jsonbody.parse(request.body, max_json_depth)
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def model(body: dict[str, Any], models: Mapping[str, ModelRuntime]) -> ModelRuntime:
    name = body.get("model")
    if name is None:
        raise invalid("model: Field required")
    if not isinstance(name, str):
        raise invalid("model: Input should be a valid string")
    runtime = models.get(name)
    if runtime is None:
        raise ApiError(404, "not_found_error", f"model: {name}")
    return runtime


def betas(request: Request) -> set[str]:
    raw = request.headers.get("anthropic-beta", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def speed(body: dict[str, Any], request: Request, runtime: ModelRuntime) -> str:
    value = body.get("speed")
    if value is None or value == "standard":
        return "standard"
    if value != "fast":
        raise invalid("speed: Input should be 'standard' or 'fast'")
    if FAST_MODE_BETA not in betas(request):
        raise invalid(f"speed: fast mode requires the anthropic-beta header '{FAST_MODE_BETA}'")
    if not runtime.profile.fast_supported:
        raise invalid(f"speed: fast mode is not supported for model {runtime.name}")
    return "fast"


LONG_CONTEXT_BETA = "context-1m-2025-08-07"


def context_window(request: Request, runtime: ModelRuntime) -> int:
    """The model's context window, or its long-context beta's when the request asks."""
    profile = runtime.profile
    beta = profile.long_context_beta_window
    if beta is not None and LONG_CONTEXT_BETA in betas(request):
        return beta
    return profile.context_window


def prompt_fits(prompt_tokens: int, window: int) -> None:
    if prompt_tokens > window:
        raise invalid(f"prompt is too long: {prompt_tokens} tokens > {window} maximum")


def sampling(body: dict[str, Any], runtime: ModelRuntime) -> tuple[int, bool]:
    """``max_tokens`` and ``stream``, once the sampling parameters are found valid."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise invalid("max_tokens: Input should be an integer greater than or equal to 1")
    ceiling = runtime.profile.max_output_tokens
    if max_tokens > ceiling:
        raise invalid(
            f"max_tokens: {max_tokens} > {ceiling}, which is the maximum allowed number "
            f"of output tokens for {runtime.name}"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1
        ):
            raise invalid(f"{name}: Input should be a number between 0 and 1")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise invalid("top_k: Input should be an integer greater than or equal to 0")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise invalid("stop_sequences: Input should be a list of strings")
    return max_tokens, stream
