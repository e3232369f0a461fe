"""Model IDs as the API documents them: a dated ID works wherever its alias does.

Docs followed (platform.claude.com, as of 2026-11): the models overview lists, per model, a
"Claude API ID" (``claude-haiku-4-5-20251001``, ``claude-sonnet-4-5-20250929``) beside its
"Claude API alias" (``claude-haiku-4-5``, ``claude-sonnet-4-5``); Opus 4.6 and Sonnet 4.6 have
one ID each. API reference, "List Models" (``GET /v1/models``): "More recently released
models are listed first"; ``limit`` defaults to 20 and ranges from 1 to 1000; ``after_id`` /
``before_id`` return the page immediately after / before that object; the answer has
``first_id``, ``last_id`` and ``has_more``. "Get a Model" (``GET /v1/models/{model_id}``)
takes a model identifier or alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from loadkit.catalog import cost_usd
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.workload import WorkloadError, parse_workload

from .conftest import Control
from .runs import run_locust

HAIKU_ID = "claude-haiku-4-5-20251001"
HELLO = [{"role": "user", "content": "hello"}]
API = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def sdk(emulator: EmulatorProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="k", base_url=emulator.base_url, max_retries=0)


def test_a_dated_id_is_served_as_its_alias(emulator: EmulatorProcess, control: Control) -> None:
    client = sdk(emulator)
    message = client.messages.create(model=HAIKU_ID, max_tokens=5, messages=HELLO)
    assert message.stop_reason in ("end_turn", "max_tokens")
    counted = client.messages.count_tokens(model=HAIKU_ID, messages=HELLO)
    assert counted.input_tokens == message.usage.input_tokens
    assert control.row("claude-haiku-4-5", "standard")["completed"] == 1
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-haiku-4-5-20990101", max_tokens=5, messages=HELLO)


def test_models_are_listed_newest_first_and_paged(
    emulator: EmulatorProcess, control: Control
) -> None:
    client = sdk(emulator)
    everything = [m for m in client.models.list()]
    ids = [m.id for m in everything]
    created = [m.created_at for m in everything]
    assert created == sorted(created, reverse=True)
    assert HAIKU_ID in ids and "claude-sonnet-4-5-20250929" in ids and "claude-opus-4-6" in ids
    assert "claude-haiku-4-5" not in ids  # an alias is not listed as a model of its own
    first = httpx2.get(f"{emulator.base_url}/v1/models", params={"limit": 2},
                       headers=API).json()  # fmt: skip
    assert [m["id"] for m in first["data"]] == ids[:2] and first["has_more"]
    assert (first["first_id"], first["last_id"]) == (ids[0], ids[1])
    second = httpx2.get(f"{emulator.base_url}/v1/models",
                        params={"limit": 2, "after_id": first["last_id"]},
                        headers=API).json()  # fmt: skip
    assert [m["id"] for m in second["data"]] == ids[2:4]
    assert second["has_more"] == (len(ids) > 4)
    back = httpx2.get(f"{emulator.base_url}/v1/models",
                      params={"limit": 2, "before_id": second["first_id"]},
                      headers=API).json()  # fmt: skip
    assert [m["id"] for m in back["data"]] == ids[:2] and not back["has_more"]
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_id": "nope"}):
        answer = httpx2.get(f"{emulator.base_url}/v1/models", params=bad,
                            headers=API)  # fmt: skip
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_get_a_model_by_dated_id_or_alias(emulator: EmulatorProcess, control: Control) -> None:
    client = sdk(emulator)
    by_alias, by_id = client.models.retrieve("claude-haiku-4-5"), client.models.retrieve(HAIKU_ID)
    assert by_alias.id == by_id.id == HAIKU_ID and by_id.display_name == "Claude Haiku 4.5"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-haiku-9")


def _workload(model: str) -> dict[str, Any]:
    return {
        "name": "pinned",
        "models": [{"model": model}],
        "prompt_tokens": {"kind": "fixed", "value": 50},
        "max_tokens": {"kind": "fixed", "value": 10},
    }


def test_a_workload_may_pin_a_dated_id_and_is_priced_as_its_alias() -> None:
    assert parse_workload(_workload(HAIKU_ID), "w").models[0].model == HAIKU_ID
    with pytest.raises(WorkloadError, match=HAIKU_ID):  # the message lists the dated IDs
        parse_workload(_workload("claude-haiku-4-6"), "w")
    assert (
        cost_usd(HAIKU_ID, "standard", 1000, 100)
        == cost_usd("claude-haiku-4-5", "standard", 1000, 100)
        > 0
    )


@pytest.mark.slow
def test_a_run_with_a_pinned_id_is_accounted_for(tmp_path: Path) -> None:
    """The emulator counts a dated ID under its alias; the harness's accounting knows they are
    one model, so every request matches."""
    import yaml

    (tmp_path / "w.yaml").write_text(yaml.safe_dump(_workload(HAIKU_ID)))
    result, data = run_locust(
        tmp_path, "-u", "4", "-r", "4", "-t", "3s", "--workload", str(tmp_path / "w.yaml")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert data is not None and data["accounting"]["mismatches"] == []
    (group,) = data["groups"]
    assert group["model"] == HAIKU_ID and group["ok"] > 0 and group["cost_usd"] > 0
