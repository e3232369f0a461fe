"""Who may call: API keys on the API's endpoints, the control token on the emulator's own."""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping, Sequence

from loadkit.emulator.errors import ApiError, invalid
from loadkit.emulator.http import Request


def api_key(request: Request, allowed: Collection[str] | None) -> str:
    """The request's API key (``x-api-key``, else a bearer token); any non-empty key passes
    when ``allowed`` is None."""
    key = request.headers.get("x-api-key")
    if not key:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    if not key:
        raise ApiError(401, "authentication_error", "x-api-key header is required")
    if allowed is not None and key not in allowed:
        raise ApiError(401, "authentication_error", "invalid x-api-key")
    if "anthropic-version" not in request.headers:
        raise invalid("anthropic-version: header is required")
    return key


def model_allowed(key: str, model: str, key_models: Mapping[str, Sequence[str]] | None) -> None:
    """403 ``permission_error`` when ``key_models`` lists the key without ``model``: "Your
    API key does not have permission to use the specified resource" (errors page, "HTTP
    errors", platform.claude.com/docs/en/api/errors, as of 2026-11)."""
    if key_models is None:
        return
    models = key_models.get(key)
    if models is not None and model not in models:
        raise ApiError(
            403,
            "permission_error",
            f"Your API key does not have permission to use the specified resource ({model}).",
        )


def require_control_token(request: Request, token: bytes | None) -> None:
    """Raises 401 unless the request carries ``token`` (no token set: anyone passes)."""
    if token is None:
        return
    given = request.headers.get("x-loadkit-control-token")
    if given is None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    if given is None or not hmac.compare_digest(given.encode("latin-1", "replace"), token):
        raise ApiError(
            401,
            "authentication_error",
            "This control endpoint requires the emulator's control token "
            "(Authorization: Bearer <token> or x-loadkit-control-token: <token>)",
        )
