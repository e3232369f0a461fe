"""The emulator's own endpoints, ``/_emulator/<action>``.

``GET health`` (always open), ``GET stats`` and ``GET served`` (open: read-only, no secrets;
the harness reads stats for its accounting), ``GET config`` (it lists the accepted API keys),
``POST config`` and ``POST reset``. With a control token set (``loadkit emulator
--control-token`` or ``LOADKIT_EMULATOR_CONTROL_TOKEN``) the last three need
``Authorization: Bearer <token>`` or ``x-loadkit-control-token: <token>``; without it they get
401 ``authentication_error``. The token is never logged or echoed.

``POST block?ms=N`` (a test's control: it proves the event-loop lag figure in stats sees a
stalled loop) holds this process's event loop for N ms (at most ``MAX_BLOCK_MS``) before
answering. It exists only with a control token set (404 without one) and needs the token.

With ``--processes N`` (``cluster`` set), stats and served answer for every process (stats
also list each one's totals under ``processes``) and config and reset reach every process
before they are answered; see ``loadkit.emulator.cluster``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from loadkit.emulator import auth, jsonbody, sse, wire
from loadkit.emulator.config import ConfigError
from loadkit.emulator.errors import ApiError, invalid
from loadkit.emulator.http import Connection, Request, chunk
from loadkit.emulator.looplag import LoopLag
from loadkit.emulator.service import Service
from loadkit.emulator.stats import served_dict

if TYPE_CHECKING:
    from loadkit.emulator.cluster import Cluster

MAX_BLOCK_MS = 1000
SERVED_BATCH = 256  # records per chunk of GET /_emulator/served (a few ms of encoding)
# Control endpoints any client may read, with or without a control token.
OPEN_CONTROL = {("GET", "health"), ("GET", "stats"), ("GET", "served")}


class Control:
    def __init__(self, service: Service, control_token: str | None) -> None:
        self.service = service
        self._token = control_token.encode() if control_token else None
        self.cluster: Cluster | None = None  # set in each process of a --processes emulator
        self.loop_lag: LoopLag | None = None  # set by the server once its loop runs

    def handle(self, conn: Connection, request: Request, action: str) -> None:
        method = request.method
        if (method, action) not in OPEN_CONTROL:
            auth.require_control_token(request, self._token)
        service = self.service
        headers: wire.Headers = []
        if self.cluster is not None and self._clustered(conn, request, action):
            return
        if action == "stats" and method == "GET":
            snapshot = service.stats.snapshot()
            snapshot["connections_opened"] = Connection.opened
            if self.loop_lag is not None:
                snapshot["event_loop_lag_ms"] = self.loop_lag.snapshot()
            wire.send_json(conn, 200, snapshot, headers)
        elif action == "served" and method == "GET":
            self._served(conn, request)
        elif action == "config" and method == "GET":
            config = service.config.model_dump(mode="json", by_alias=True)
            wire.send_json(conn, 200, config, headers)
        elif action == "config" and method == "POST":
            patch = jsonbody.parse(request.body or b"{}", service.max_json_depth)
            try:
                new = service.update_config(patch)
            except ConfigError as err:
                raise invalid(str(err)) from None
            wire.send_json(conn, 200, new.model_dump(mode="json", by_alias=True), headers)
        elif action == "reset" and method == "POST":
            service.reset()
            wire.send_json(conn, 200, {"reset": True}, headers)
        elif action == "block" and method == "POST" and self._token is not None:
            ms = _query_int(dict(parse_qsl(request.query)), "ms")
            if ms is None or ms > MAX_BLOCK_MS:
                raise invalid(f"ms: an integer from 0 to {MAX_BLOCK_MS} is required")
            time.sleep(ms / 1000.0)  # on purpose: the loop stalls, as a long callback would
            wire.send_json(conn, 200, {"blocked_ms": ms}, headers)
        elif action == "health" and method == "GET":
            wire.send_json(conn, 200, {"status": "ok"}, headers)
        else:
            raise ApiError(404, "not_found_error", f"Not found: {method} /_emulator/{action}")

    def _clustered(self, conn: Connection, request: Request, action: str) -> bool:
        """Answers (later) what every process must answer; False for what this one can."""
        cluster = self.cluster
        assert cluster is not None
        method = request.method
        if action == "stats" and method == "GET":

            async def stats() -> tuple[Any, wire.Headers]:
                return await cluster.stats(), []

            cluster.answer(conn, stats)
        elif action == "served" and method == "GET":
            query = dict(parse_qsl(request.query))
            request_id = query.get("request_id")
            offset, limit = _query_int(query, "offset") or 0, _query_int(query, "limit")

            async def served() -> None:
                try:
                    records, total = await cluster.served(request_id, offset, limit)
                except ApiError as err:
                    wire.send_error(conn, err, self.service.new_id("req"))
                    return
                self._send_records(conn, records, total)

            cluster.spawn(served())
        elif action in ("config", "reset") and method == "POST":
            body = request.body

            async def lead() -> tuple[Any, wire.Headers]:
                result = await cluster.lead(action, body)
                return result.get("config", result), []

            cluster.answer(conn, lead)
        else:
            return False
        return True

    def _served(self, conn: Connection, request: Request) -> None:
        """``GET /_emulator/served``: a JSON list of records, oldest first. ``?request_id=``
        finds one; ``?offset=&limit=`` gives a page (header ``x-emulator-served-total``
        says how many there are). A long list is sent in chunks of SERVED_BATCH records, one
        per turn of the event loop and only as fast as the client reads, so that serving it
        never delays the streams being timed."""
        stats = self.service.stats
        query = dict(parse_qsl(request.query))
        request_id = query.get("request_id")
        if request_id is not None:
            records = stats.served_by_id(request_id)
        else:
            offset = _query_int(query, "offset") or 0
            records = stats.served_slice(offset, _query_int(query, "limit"))
        self._send_records(conn, records, len(stats.served), served_dict)

    def _send_records(
        self,
        conn: Connection,
        records: Sequence[Any],
        total: int,
        as_dict: Callable[[Any], dict[str, Any]] = dict,
    ) -> None:
        headers = [
            ("x-emulator-served-total", str(total)),
            ("content-type", wire.JSON),
        ]
        if len(records) <= SERVED_BATCH:
            wire.send_json(conn, 200, [as_dict(r) for r in records], headers)
            return
        conn.write(conn.stream_head(headers))
        position = 0
        dumps = sse.dumps
        loop = self.service.loop

        def pump() -> None:
            nonlocal position
            if conn.closed:
                return
            batch = records[position : position + SERVED_BATCH]
            inner = dumps([as_dict(r) for r in batch])[1:-1]
            piece = (b"[" if position == 0 else b",") + inner
            position += SERVED_BATCH
            if position >= len(records):
                conn.finish_stream(chunk(piece + b"]"))
                return
            conn.write(chunk(piece))
            if conn.write_paused:
                conn.on_drain = pump
            else:
                loop.call_soon(pump)

        pump()


def _query_int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise invalid(f"{name}: Input should be a non-negative integer")
    return int(raw)
