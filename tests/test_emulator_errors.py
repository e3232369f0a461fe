"""Response headers and errors as the API documents them, through the real anthropic SDK.

Pages (as of 2026-11): API overview, "Response headers" (platform.claude.com/docs/en/api/
overview); errors page, "HTTP errors" and "Request size limits" (platform.claude.com/docs/
en/api/errors).
"""

from __future__ import annotations

import anthropic
import pytest

from loadkit.emulator.launcher import EmulatorProcess

from .conftest import Control

HELLO = [{"role": "user", "content": "Hello"}]
ORG_HEADER = "anthropic-organization-id"


def _client(emulator: EmulatorProcess, key: str = "test-key") -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=emulator.base_url, max_retries=0)


def test_organization_id_on_every_response(emulator: EmulatorProcess, control: Control) -> None:
    """ "anthropic-organization-id: The organization ID associated with the API key used in
    the request", in every response beside request-id (API overview, "Response headers"):
    on streamed and unary messages, count_tokens, models, 4xx errors and 429s; the configured
    ID is the one sent. A request without a valid key has no organization: 401 has none."""
    organization = control.http.get("/_emulator/config").json()["organization_id"]
    client = _client(emulator)
    unary = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=5, messages=HELLO
    )
    with client.messages.with_streaming_response.create(
        model="claude-haiku-4-5", max_tokens=5, messages=HELLO, stream=True
    ) as streamed:
        streamed.read()
    counted = client.messages.with_raw_response.count_tokens(
        model="claude-haiku-4-5", messages=HELLO
    )
    models = client.models.with_raw_response.list()
    for response in (unary, streamed, counted, models):
        assert response.headers[ORG_HEADER] == organization
        assert response.headers["request-id"].startswith("req_")
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude-haiku-4-5", max_tokens=0, messages=HELLO)
    assert bad.value.response.headers[ORG_HEADER] == organization
    control.configure({"rate_limits": {"haiku": {"requests_per_minute": 1}}}).raise_for_status()
    client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=HELLO)
    assert limited.value.response.headers[ORG_HEADER] == organization
    control.configure({"organization_id": "org-under-test", "api_keys": ["good"]})
    assert _client(emulator, "good").models.with_raw_response.list().headers[ORG_HEADER] == (
        "org-under-test"
    )
    with pytest.raises(anthropic.AuthenticationError) as unknown:
        _client(emulator, "bad").messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=HELLO
        )
    assert ORG_HEADER not in unknown.value.response.headers


def test_permission_error_for_a_model_the_key_may_not_use(
    emulator: EmulatorProcess, control: Control
) -> None:
    """ "403 - permission_error: Your API key does not have permission to use the specified
    resource" (errors page, "HTTP errors"). ``api_key_models`` lists the models a key may
    use: another model gets 403 (the SDK's PermissionDeniedError, not retried), on messages
    and count_tokens; the listed model passes, by alias or dated ID; unlisted keys pass."""
    control.configure({"api_key_models": {"haiku-only": ["claude-haiku-4-5"]}}).raise_for_status()
    limited = _client(emulator, "haiku-only")
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        limited.messages.create(model="claude-opus-4-6", max_tokens=5, messages=HELLO)
    assert denied.value.status_code == 403
    assert isinstance(denied.value.body, dict)
    assert denied.value.body["error"]["type"] == "permission_error"
    assert "haiku-only" not in str(denied.value.body)  # the key is never echoed
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.messages.count_tokens(model="claude-opus-4-6", messages=HELLO)
    for model in ("claude-haiku-4-5", "claude-haiku-4-5-20251001"):
        assert limited.messages.create(model=model, max_tokens=5, messages=HELLO).content
    assert (
        _client(emulator, "other")
        .messages.create(model="claude-opus-4-6", max_tokens=5, messages=HELLO)
        .content
    )
    assert control.row("claude-opus-4-6", "standard")["unauthorized"] == 1
    refused = control.configure({"api_key_models": {"k": ["claude-nonexistent"]}})
    assert refused.status_code == 400 and "api_key_models" in refused.text


def test_request_too_large_above_32_mb(emulator: EmulatorProcess, control: Control) -> None:
    """ "413 - request_too_large: Request exceeds the maximum allowed number of bytes" and
    "Messages API: 32 MB" (errors page, "HTTP errors" and "Request size limits"): a body just
    over 32 MB gets 413 request_too_large through the SDK (not retried); one just under is
    read whole (and then refused as too many tokens, 400)."""
    limit = control.http.get("/_emulator/config").json()["http"]["max_body_bytes"]
    assert limit == 32 * 1024 * 1024
    client = _client(emulator)
    overhead = len(
        '{"max_tokens":5,"messages":[{"role":"user","content":""}],"model":"claude-haiku-4-5"}'
    )
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=5,
            messages=[{"role": "user", "content": "x" * (limit - overhead + 1000)}],
        )
    assert too_large.value.status_code == 413
    assert isinstance(too_large.value.body, dict)
    assert too_large.value.body["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=5,
            messages=[{"role": "user", "content": "x" * (limit - overhead - 1000)}],
        )
