"""One worker of ``loadkit emulator --processes N``: what it shares with its siblings.

Each worker serves the public port (``SO_REUSEPORT``: the kernel spreads connections over
the workers) and, for its siblings only, a Unix socket in a directory only this user can
read (``Worker.socket_path``), on which it answers:

* ``GET /process/stats``, ``GET /process/served``: its own counters and served records;
* ``POST /process/config``, ``POST /process/reset``: apply a config patch, reset its stats;
* ``POST /lead/config``, ``POST /lead/reset`` (worker 0, the leader): one at a time, check the
  patch, then have every worker apply it (or reset) before answering.

So ``GET /_emulator/stats`` and ``GET /_emulator/served`` on any worker answer for all of
them, and a ``POST /_emulator/config`` or ``/_emulator/reset`` on any worker has reached every
worker when it is answered, in the same order everywhere. Rate limits and the prompt cache
are shared, not merged (``sharedlimits``, ``sharedcache``).

Cost: a sibling encodes its whole answer at once (its served log: up to ``served_log_size``
records, some tens of MB at the default 100,000), which holds up that worker's streams for as
long; a single-process emulator sends its log in slices between them. Read ``served`` of a
busy multi-process emulator after the run; ``stats`` is small (lateness and loop lag as
histograms, the loop lag's last 10 s as samples).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from loadkit.emulator import sse, wire
from loadkit.emulator.config import ConfigError, config_from_mapping
from loadkit.emulator.errors import ApiError, invalid
from loadkit.emulator.histogram import Histogram
from loadkit.emulator.http import Connection, Request
from loadkit.emulator.limits import RateLimits
from loadkit.emulator.looplag import LoopLag, merge
from loadkit.emulator.service import Service
from loadkit.emulator.sharedcache import RemoteCache
from loadkit.emulator.sharedlimits import SharedBuckets
from loadkit.emulator.stats import merge_snapshots, served_dict

log = logging.getLogger("loadkit.emulator")
CALL_TIMEOUT_S = 30.0
LEADER = 0


class ClusterError(RuntimeError):
    pass


@dataclass
class Worker:
    """What a worker is given by the supervisor when it is forked."""

    index: int
    count: int
    socket_dir: Path
    buckets: SharedBuckets
    cache: RemoteCache

    def socket_path(self, index: int) -> str:
        return str(self.socket_dir / f"worker-{index}.sock")


class Cluster:
    """This worker's part: shared limits and cache installed, siblings asked and answered."""

    def __init__(self, worker: Worker, service: Service) -> None:
        self.worker = worker
        self.service = service
        self._lead_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop_lag: LoopLag | None = None  # set by the server once its loop runs
        service.limits = RateLimits(worker.buckets, worker.buckets.lock)
        service.cache = worker.cache
        service.configure(service.config)

    # public control endpoints (see control.py) ---------------------------------------------
    def answer(
        self, conn: Connection, make: Callable[[], Awaitable[tuple[Any, wire.Headers]]]
    ) -> None:
        """Answers ``conn`` with what ``make`` returns, once its siblings have answered."""

        async def run() -> None:
            try:
                body, headers = await make()
                wire.send_json(conn, 200, body, headers)
            except ApiError as err:
                wire.send_error(conn, err, self.service.new_id("req"))
            except Exception:
                log.exception("emulator: asking the other processes failed")
                error = ApiError(500, "api_error", "emulator internal error (other processes)")
                wire.send_error(conn, error, self.service.new_id("req"))

        self.spawn(run())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs ``work`` on this loop, holding on to it until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stats(self) -> dict[str, Any]:
        """Every worker's stats merged, and each one's own under ``processes``."""
        parts = await self._everyone("GET", "/process/stats")
        lateness = Histogram()
        processes = []
        for part in parts:
            lateness.add_raw(part["lateness_ms"])
            snapshot = part["snapshot"]
            processes.append(
                {
                    "process": part["process"],
                    "pid": part["pid"],
                    "totals": snapshot["totals"],
                    "http": snapshot["http"],
                    "connections_opened": part["connections_opened"],
                }
            )
        merged = merge_snapshots([part["snapshot"] for part in parts], lateness)
        merged["connections_opened"] = sum(p["connections_opened"] for p in processes)
        lags = [part["loop_lag"] for part in parts if part.get("loop_lag")]
        if lags:
            merged["event_loop_lag_ms"] = merge(lags)
        merged["processes"] = processes
        return merged

    async def served(
        self, request_id: str | None, offset: int, limit: int | None
    ) -> tuple[list[dict[str, Any]], int]:
        """Every worker's served records, oldest first, and how many there are in all."""
        query = urlencode({"request_id": request_id}) if request_id is not None else ""
        parts = await self._everyone("GET", f"/process/served?{query}")
        streams = (part["records"] for part in parts)
        merged = [record for _, record in heapq.merge(*streams, key=lambda pair: pair[0])]
        total = sum(p["total"] for p in parts)
        if request_id is None:
            end = len(merged) if limit is None else offset + limit
            merged = merged[offset:end]
        return merged, total

    async def lead(self, action: str, patch: bytes = b"") -> dict[str, Any]:
        """``config`` or ``reset`` for every worker, through the leader."""
        if self.worker.index == LEADER:
            result = await self._lead(action, patch)
        else:
            result = await self._call(LEADER, "POST", f"/lead/{action}", patch)
        if "error" in result:
            raise invalid(result["error"])
        return result

    # the leader ---------------------------------------------------------------------------
    async def _lead(self, action: str, patch: bytes) -> dict[str, Any]:
        async with self._lead_lock:
            service = self.service
            if action == "config":
                try:
                    parsed = json.loads(patch or b"{}")
                    new = config_from_mapping(parsed, "POST /_emulator/config", base=service.config)
                except (ConfigError, ValueError) as err:
                    return {"error": str(err)}
                await self._everyone("POST", "/process/config", patch or b"{}")
                return {"config": new.model_dump(mode="json", by_alias=True)}
            if action == "reset":
                self.worker.buckets.forget_all()
                self.worker.cache.clear_all()
                await self._everyone("POST", "/process/reset")
                return {"reset": True}
        raise ApiError(404, "not_found_error", f"no such action: {action}")

    # the siblings' socket -----------------------------------------------------------------
    def handle_internal(self, conn: Connection, request: Request) -> None:
        """A sibling's request on this worker's Unix socket."""
        try:
            if conn.closed:
                return
            if request.error is not None:
                raise ApiError(*request.error)
            route = (request.method, request.path)
            if route[0] == "POST" and route[1].startswith("/lead/"):
                action, body = route[1][len("/lead/") :], request.body
                self.answer(conn, lambda: self._lead_answer(action, body))
                return
            body = self._local(route, request)
            wire.send_json(conn, 200, body, [])
        except ApiError as err:
            wire.send_error(conn, err, self.service.new_id("req"))
        except Exception as err:
            log.exception("emulator: a sibling's request failed")
            wire.send_error(conn, ApiError(500, "api_error", str(err)), "internal")

    async def _lead_answer(self, action: str, body: bytes) -> tuple[Any, wire.Headers]:
        return await self._lead(action, body), []

    def _local(self, route: tuple[str, str], request: Request) -> Any:
        service = self.service
        if route == ("GET", "/process/stats"):
            return self.own_stats()
        if route == ("GET", "/process/served"):
            return self.own_served(dict(parse_qsl(request.query)).get("request_id"))
        if route == ("POST", "/process/config"):
            patch = json.loads(request.body or b"{}")
            service.update_config(patch)
            return {}
        if route == ("POST", "/process/reset"):
            service.reset()
            return {}
        raise ApiError(404, "not_found_error", f"Not found: {route[0]} {route[1]}")

    def own_stats(self) -> dict[str, Any]:
        stats = self.service.stats
        return {
            "process": self.worker.index,
            "pid": os.getpid(),
            "snapshot": stats.snapshot(),
            "connections_opened": Connection.opened,
            "lateness_ms": stats.lateness.raw(),
            "loop_lag": self.loop_lag.raw() if self.loop_lag is not None else None,
        }

    def own_served(self, request_id: str | None) -> dict[str, Any]:
        stats = self.service.stats
        found = stats.served_by_id(request_id) if request_id is not None else None
        stamped = stats.served_stamped(found)
        return {
            "total": len(stats.served),
            "records": [[stamp, served_dict(record)] for stamp, record in stamped],
        }

    # asking ---------------------------------------------------------------------------------
    async def _everyone(self, method: str, path: str, body: bytes = b"") -> list[Any]:
        """Every worker's answer, in worker order (this one's without a round trip)."""
        calls = [self._call(index, method, path, body) for index in range(self.worker.count)]
        return list(await asyncio.gather(*calls))

    async def _call(self, index: int, method: str, path: str, body: bytes = b"") -> Any:
        if index == self.worker.index:
            route, _, query = path.partition("?")
            request = Request(method, route, query, {}, body, 0.0)
            return json.loads(sse.dumps(self._local((method, route), request)))
        return await asyncio.wait_for(self._exchange(index, method, path, body), CALL_TIMEOUT_S)

    async def _exchange(self, index: int, method: str, path: str, body: bytes) -> Any:
        reader, writer = await asyncio.open_unix_connection(self.worker.socket_path(index))
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nhost: worker-{index}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            data = await reader.read()
        finally:
            writer.close()
        status_line, _, rest = data.partition(b"\r\n")
        _, _, payload = rest.partition(b"\r\n\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"200":
            raise ClusterError(
                f"process {index}: {method} {path}: {status_line!r} {payload[:300]!r}"
            )
        return json.loads(payload)
