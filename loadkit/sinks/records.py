"""The records sink: every result record as one JSON line (``--records PATH.jsonl``).

The user's request path only appends the finished record to a bounded buffer (``add``: never
blocks, never raises). A writer thread (a greenlet under Locust's monkey-patching) turns
records into JSON and appends them to the file in batches; ``close`` writes what is left
within a time bound. A record that finds the buffer full, or is still buffered at the
deadline, is counted as dropped and logged, never lost silently.

One line per request: every field of ``ResultRecord`` under its own name (its attempts as a
list of objects, each with every field of ``Attempt``), the derived metrics (``ttft_ms``,
``e2e_ms``, ``otps``, ``queue_delay_ms``, ``ttft_text_ms``, ``tool_round_trip_ms``; null when
undefined) ``run_id``, ``process``,
``wall_offset_ns`` (add it to a ``t_*`` time, a ``perf_counter_ns`` of the writing process,
to get Unix ns) and ``ended_while_stopping`` (the request ended after the run began to stop:
stopping cuts every stream in flight, and the process's work on that delays the reading of
the others, so its times are partly the harness's). ``loadkit calibrate`` reads these files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from loadkit.record import Attempt, ResultRecord
from loadkit.sinks.background import BackgroundWriter

log = logging.getLogger("loadkit.records")

RECORD_FIELDS = tuple(f.name for f in fields(ResultRecord))
ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))
DERIVED = ("ttft_ms", "e2e_ms", "otps", "queue_delay_ms", "ttft_text_ms", "tool_round_trip_ms")


def record_dict(record: ResultRecord) -> dict[str, Any]:
    """Every field of the record (attempts included) and its derived metrics, as JSON types."""
    data: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        if name == "attempts":
            value = [{key: getattr(a, key) for key in ATTEMPT_FIELDS} for a in value]
        elif name == "outcome":
            value = value.value
        elif name in ("itl_ns", "rate_limits"):
            value = list(value) if name == "itl_ns" else dict(value)
        data[name] = value
    for name in DERIVED:
        data[name] = getattr(record, name)
    return data


@dataclass
class RecordsStats:
    written: int = 0  # records written to the file
    dropped: int = 0  # records refused (buffer full) or left unwritten at close
    path: str = ""
    error: str = ""  # why the file could not be written, if it could not

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "path": self.path,
            "error": self.error,
        }


class RecordsWriter:
    """Buffers finished records and appends them, as JSON lines, from a background writer."""

    def __init__(
        self,
        path: str | Path,
        run_id: str,
        process: str,
        append: bool = False,
        max_buffered: int = 200_000,
        batch_size: int = 2000,
        flush_interval_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.process = process
        self.max_buffered = max_buffered
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = RecordsStats(path=str(self.path))
        # perf_counter_ns -> Unix ns, measured once per process.
        self.wall_offset_ns = time.time_ns() - time.perf_counter_ns()
        self._writer: BackgroundWriter[tuple[ResultRecord, bool]] = BackgroundWriter(
            "loadkit-records", self._run
        )
        self._drop_logged = 0.0
        # Opened here, so that a path that cannot be written is said at the start, not lost.
        self._file: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer.start()

    # the hot path -------------------------------------------------------------------------
    def add(self, record: ResultRecord, while_stopping: bool = False) -> None:
        """Queue a finished record. Never blocks, never raises."""
        buffer = self._writer.buffer
        if self._writer.closed or len(buffer) >= self.max_buffered:
            self.stats.dropped += 1
            now = time.monotonic()
            if now - self._drop_logged > 5:
                self._drop_logged = now
                log.error(
                    "records buffer full (%d records) or closed: %d records dropped so far",
                    self.max_buffered,
                    self.stats.dropped,
                )
            return
        buffer.append((record, while_stopping))
        if len(buffer) >= self.batch_size:
            self._writer.wake.set()

    # the writer -----------------------------------------------------------------------------
    def _line(self, record: ResultRecord, while_stopping: bool) -> str:
        data = record_dict(record)
        data["ended_while_stopping"] = while_stopping
        data["run_id"] = self.run_id
        data["process"] = self.process
        data["wall_offset_ns"] = self.wall_offset_ns
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

    def _write_batch(self) -> bool:
        """Write up to one batch; True if the buffer had something."""
        buffer = self._writer.buffer
        count = min(len(buffer), self.batch_size)
        if not count:
            return False
        lines = [self._line(*buffer[i]) for i in range(count)]
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        for _ in range(count):
            buffer.popleft()
        self.stats.written += count
        return True

    def _run(self) -> None:
        while True:
            self._writer.wake.wait(self.flush_interval_s)
            self._writer.wake.clear()
            try:
                while self._write_batch():
                    if len(self._writer.buffer) < self.batch_size and not self._writer.stopping:
                        break
            except (OSError, ValueError, IndexError) as err:  # a full disk, a closed file
                self.stats.error = f"{type(err).__name__}: {err}"
                log.error("records: cannot write %s (%s)", self.path, self.stats.error)
                return
            if self._writer.stopping and not self._writer.buffer:
                return

    def close(self, timeout_s: float = 15.0) -> RecordsStats:
        """Write what is buffered (for at most ``timeout_s``), then stop; what is left is
        counted as dropped."""
        left = self._writer.stop(timeout_s)
        if left:
            self.stats.dropped += left
            log.error("records: %d records could not be written to %s", left, self.path)
        self._file.close()
        return self.stats
