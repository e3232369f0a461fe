"""The emulator's request handling: routing, authentication and validation on top of the
serving state (``service``), the control endpoints (``control``, which documents them and
their control token) and the wire formats (``wire``)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import parse_qsl

from loadkit.emulator import auth, content, jsonbody, validation, wire
from loadkit.emulator.config import EmulatorConfig
from loadkit.emulator.control import Control
from loadkit.emulator.errors import ApiError, invalid
from loadkit.emulator.http import Connection, HttpSettings, Request
from loadkit.emulator.job import ModelRuntime
from loadkit.emulator.prompt import analyse_prompt
from loadkit.emulator.service import Service
from loadkit.emulator.stats import Stats

log = logging.getLogger("loadkit.emulator")
MESSAGES_PATH = "/v1/messages"


class Emulator:
    """One emulator process's handler of requests. Runs on one asyncio loop."""

    def __init__(
        self, config: EmulatorConfig, seed: int | None = None, control_token: str | None = None
    ) -> None:
        self.service = Service(config, seed)
        self.control = Control(self.service, control_token)
        self._counted = False  # the Messages request being handled has been counted

    @property
    def stats(self) -> Stats:
        return self.service.stats

    @property
    def http_settings(self) -> HttpSettings:
        return self.service.http_settings

    # entry point ------------------------------------------------------------------------
    def handle(self, conn: Connection, request: Request) -> None:
        self._counted = False
        try:
            if conn.closed:
                self._abandoned(request)
            elif request.error is not None:
                self._refused(conn, request)
            else:
                self._route(conn, request)
        except ApiError as err:
            self._send_error(conn, err)
        except Exception:
            log.exception("emulator bug while handling %s %s", request.method, request.path)
            if request.path == MESSAGES_PATH and not self._counted:
                counters = self.stats.counters("unknown", "standard")
                counters.received += 1
                counters.api_error += 1
            self._send_error(conn, ApiError(500, "api_error", "emulator internal error"))

    def _send_error(
        self,
        conn: Connection,
        err: ApiError,
        request_id: str | None = None,
        organization_id: str | None = None,
    ) -> None:
        wire.send_error(conn, err, request_id or self.service.new_id("req"), organization_id)

    def _refused(self, conn: Connection, request: Request) -> None:
        """A request refused while being read (too large, too slow, malformed)."""
        assert request.error is not None
        status, error_type, message = request.error
        if request.path == MESSAGES_PATH:
            counters = self.stats.counters("unknown", "standard")
            counters.received += 1
            counters.invalid += 1
            self._counted = True
        self._send_error(conn, ApiError(status, error_type, message))

    def _abandoned(self, request: Request) -> None:
        """A request that was waiting its turn on a connection that then closed."""
        if request.path != MESSAGES_PATH:
            return
        service = self.service
        model, speed = "unknown", "standard"
        try:
            body = jsonbody.parse(request.body, service.max_json_depth)
            if isinstance(body, dict):
                name = body.get("model")
                runtime = service.model_ids.get(name) if isinstance(name, str) else None
                if runtime is not None:
                    model = runtime.name
                    if body.get("speed") == "fast" and runtime.profile.fast_supported:
                        speed = "fast"
        except ApiError:
            pass
        counters = self.stats.counters(model, speed)
        counters.received += 1
        counters.client_closed += 1
        self._counted = True
        service.log_rejection(service.new_id("req"), model, speed, "client_closed")

    def _route(self, conn: Connection, request: Request) -> None:
        path, method = request.path, request.method
        if path == MESSAGES_PATH:
            self.messages(conn, request)
        elif path == "/v1/messages/count_tokens":
            validation.require_method(method, "POST")
            key = auth.api_key(request, self.service.config.api_keys)
            self.count_tokens(conn, request, key)
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            validation.require_method(method, "GET")
            auth.api_key(request, self.service.config.api_keys)
            self.list_models(
                conn, request, path[len("/v1/models/") :] if path != "/v1/models" else None
            )
        elif path.startswith("/_emulator/"):
            self.control.handle(conn, request, path[len("/_emulator/") :])
        else:
            raise ApiError(404, "not_found_error", f"Not found: {method} {path}")

    # endpoints --------------------------------------------------------------------------
    def messages(self, conn: Connection, request: Request) -> None:
        service = self.service
        request_id = service.new_id("req")
        model, speed = "unknown", "standard"
        organization: str | None = None  # the key's organization, once the key is known
        try:
            validation.require_method(request.method, "POST")
            key = auth.api_key(request, service.config.api_keys)
            organization = service.organization_id
            body = validation.parse_body(request, service.max_json_depth)
            runtime = validation.model(body, service.model_ids)
            model = runtime.name
            auth.model_allowed(key, model, service.config.api_key_models)
            speed = validation.speed(body, request, runtime)
            max_tokens, stream = validation.sampling(body, runtime)
            cache_key = None
            if b'"cache_control"' in request.body:
                cache_key = f"{model}\0{speed}\0{hashlib.sha256(key.encode()).hexdigest()}".encode()
            prompt = analyse_prompt(body, cache_key)
            window = validation.context_window(request, runtime)
            validation.prompt_fits(prompt.tokens, window)
            features = content.features(
                body,
                request,
                prompt.turn_blocks,
                max_tokens,
                window,
                runtime.profile.adaptive_thinking,
            )
        except ApiError as err:
            counters = self.stats.counters(model, speed)
            counters.received += 1
            self._counted = True
            if err.status in (401, 403):
                counters.unauthorized += 1
            else:
                counters.invalid += 1
            self._send_error(conn, err, request_id, organization)
            return

        counters = self.stats.counters(model, speed)
        counters.received += 1
        self._counted = True
        service.serve(
            conn,
            request,
            request_id,
            counters,
            runtime,
            speed,
            stream,
            max_tokens,
            prompt,
            window - prompt.tokens,
            features,
        )

    def count_tokens(self, conn: Connection, request: Request, key: str) -> None:
        service = self.service
        body = validation.parse_body(request, service.max_json_depth)
        runtime = validation.model(body, service.model_ids)
        auth.model_allowed(key, runtime.name, service.config.api_key_models)
        prompt = analyse_prompt(body, None)
        window = validation.context_window(request, runtime)
        adaptive = runtime.profile.adaptive_thinking
        content.features(body, request, prompt.turn_blocks, None, window, adaptive)
        headers = wire.id_headers(service.new_id("req"), service.organization_id)
        wire.send_json(conn, 200, {"input_tokens": prompt.tokens}, headers)

    def list_models(self, conn: Connection, request: Request, model_id: str | None) -> None:
        """``GET /v1/models`` (newest first, paged by ``limit``, ``after_id``, ``before_id``)
        and ``GET /v1/models/{model_id}``, where the ID may be a dated ID or an alias."""
        service = self.service
        headers = wire.id_headers(service.new_id("req"), service.organization_id)
        if model_id is not None:
            runtime = service.model_ids.get(model_id)
            if runtime is None:
                raise ApiError(404, "not_found_error", f"model: {model_id}")
            wire.send_json(conn, 200, _model_entry(runtime), headers)
            return
        entries = sorted(
            (_model_entry(r) for r in service.models.values()),
            key=lambda entry: entry["created_at"],
            reverse=True,
        )
        query = dict(parse_qsl(request.query))
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise invalid("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise invalid("limit: Input should be between 1 and 1000")
        ids = [entry["id"] for entry in entries]
        if "after_id" in query:
            after = _cursor(ids, query["after_id"], "after_id")
            page, more = entries[after + 1 : after + 1 + limit], len(entries) > after + 1 + limit
        elif "before_id" in query:
            before = _cursor(ids, query["before_id"], "before_id")
            page, more = entries[max(0, before - limit) : before], before - limit > 0
        else:
            page, more = entries[:limit], len(entries) > limit
        body = {
            "data": page,
            "has_more": more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        wire.send_json(conn, 200, body, headers)


def _model_entry(runtime: ModelRuntime) -> dict[str, Any]:
    profile = runtime.profile
    return {
        "type": "model",
        "id": profile.snapshot_id or runtime.name,
        "display_name": profile.display_name,
        "created_at": profile.created_at,
    }


def _cursor(ids: list[str], value: str, name: str) -> int:
    if value not in ids:
        raise invalid(f"{name}: {value!r} is not the ID of a listed model")
    return ids.index(value)
