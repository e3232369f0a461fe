"""The InfluxDB sink: every result record as a point, written in batches off the hot path.

The user's request path only appends the record to a bounded buffer (``add``). A writer
thread (a greenlet under Locust's monkey-patching) turns records into line protocol and
writes batches through ``influxdb-client``'s synchronous write API whenever ``batch_size``
records wait or ``flush_interval_s`` has passed. A failed write is retried with exponential
backoff, keeping its batch; nothing is dropped until the buffer holds ``max_buffered``
records, beyond which new records are counted as dropped and logged. ``close`` flushes what
is left within a time bound. (influxdb-client's own batching API runs on a shared
single-worker scheduler whose ``flush`` does nothing and whose ``close`` can block shutdown
for minutes: loadkit does its own buffering.)

Schema (see docs/influxdb.md): measurement ``llm_request`` (one point per finished request,
at the request's start time in ns), ``llm_ratelimit`` (rate-limit headroom, at most one
point per model x speed per second), ``llm_run`` (run events, for annotations).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from loadkit.record import ResultRecord
from loadkit.sinks.background import BackgroundWriter

log = logging.getLogger("loadkit.influxdb")

REQUEST = "llm_request"
RATELIMIT = "llm_ratelimit"
RUN = "llm_run"
_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\"})
# Rate-limit headers become fields: anthropic-fast-input-tokens-remaining -> input_tokens_remaining
_HEADER_PREFIXES = (("anthropic-ratelimit-", "standard"), ("anthropic-fast-", "fast"))


_escaped_tags: dict[str, str] = {}


RETRYABLE_STATUS = {408, 429}


def _finite(value: float) -> float:
    """Line protocol has no inf or nan (a server refuses the whole batch): 0 instead."""
    return value if math.isfinite(value) else 0.0


def _tag(value: str) -> str:
    """A tag value escaped for line protocol (tag values repeat: cached)."""
    found = _escaped_tags.get(value)
    if found is None:
        found = _escaped_tags[value] = value.translate(_TAG_ESCAPES) or "none"
    return found


def _string_field(value: str) -> str:
    return '"' + value.translate(_STRING_ESCAPES) + '"'


@dataclass
class SinkSettings:
    url: str
    token: str = field(repr=False, default="")
    org: str = "loadkit"
    bucket: str = "loadkit"
    batch_size: int = 5000
    flush_interval_s: float = 1.0
    max_buffered: int = 1_000_000
    retry_max_backoff_s: float = 10.0
    timeout_s: float = 10.0
    line_file: str = ""  # also append every line written here (for import elsewhere)


@dataclass
class SinkStats:
    written: int = 0  # points the server accepted
    dropped: int = 0  # points refused because the buffer was full, left at close, or rejected
    failed_writes: int = 0  # write calls that failed (and were retried)
    rejected: int = 0  # points the server refused (a 4xx answer): dropped, not retried
    rejection: str = ""  # the server's reason, from its last refusal

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "failed_writes": self.failed_writes,
            "rejected": self.rejected,
            "rejection": self.rejection,
        }


def rejected_points(status: int, body: str, batch: int) -> int:
    """How many points of a batch the server says it refused: its ``dropped=N`` when it
    reports a partial write, else the whole batch."""
    found = re.search(r"dropped=(\d+)", body)
    return min(batch, int(found.group(1))) if found else batch


class LineFormatter:
    """Records to line protocol, with the run's constant tags precomputed."""

    def __init__(self, run_id: str, worker: str) -> None:
        self.common = f"run_id={_tag(run_id)},worker={_tag(worker)}"
        # perf_counter_ns -> Unix ns, measured once per process.
        self.wall_offset_ns = time.time_ns() - time.perf_counter_ns()
        self._last_headroom: dict[tuple[str, str], int] = {}

    def request_line(self, r: ResultRecord) -> str:
        """One request's point; its metrics are the record's own definitions."""
        start = r.t_send or r.t_end or time.perf_counter_ns()
        ttft, e2e, otps = r.ttft_ms, r.e2e_ms, r.otps
        optional = ""
        if ttft is not None:
            optional += f",ttft_ms={ttft}"
        if e2e is not None:
            optional += f",e2e_ms={e2e}"
        if otps is not None:
            optional += f",otps={otps}"
        if r.turn:
            optional += f",turn={r.turn}i"
        if r.output_target:
            optional += f",output_target={r.output_target}i"
            if r.ok:  # the summary's ratio covers the requests that completed
                optional += f",output_ratio={r.output_tokens / r.output_target}"
        if r.parsed_content:  # conversations, tools, thinking (loadkit.content)
            optional += (
                f",thinking_tokens={r.thinking_tokens}i,text_tokens={r.text_tokens}i,"
                f"tool_use_tokens={r.tool_use_tokens}i,tool_calls={r.tool_calls}i"
            )
            ttft_text, round_trip = r.ttft_text_ms, r.tool_round_trip_ms
            if ttft_text is not None:
                optional += f",ttft_text_ms={ttft_text}"
            if round_trip is not None:
                optional += f",tool_round_trip_ms={round_trip}"
        # a tag (a short list of API error types and exception names), so that dashboards
        # can group failures by it
        error_tag = f",error_type={_tag(r.error_type)}" if r.error_type else ""
        # the workload's dataset names: few, so a tag (session ids are left out: one a
        # conversation)
        dataset_tag = f",dataset={_tag(r.dataset)}" if r.dataset else ""
        return (
            f"{REQUEST},{self.common},scenario={_tag(r.scenario)},model={_tag(r.model)},"
            f"speed={r.speed},served_speed={r.served_speed or 'none'},"
            f"outcome={r.outcome.value},fallback={'true' if r.fell_back else 'false'}{error_tag}"
            f"{dataset_tag} "
            f"attempts={len(r.attempts)}i,responses_429={r.responses_429}i,status={r.status}i,"
            f"input_tokens={r.input_tokens}i,"
            f"output_tokens={r.output_tokens}i,cache_read_tokens={r.cache_read_input_tokens}i,"
            f"cache_creation_tokens={r.cache_creation_input_tokens}i,"
            f"cache_tokens_lost={r.cache_tokens_lost}i,retry_wait_ms={r.retry_wait_s * 1000},"
            f"queue_ms={r.queue_delay_ms},cost_usd={_finite(r.cost_usd)}{optional} "
            f"{start + self.wall_offset_ns}"
        )

    def headroom_line(self, r: ResultRecord) -> str | None:
        """Rate-limit headroom from the record's headers, at most once a second per group."""
        if not r.rate_limits:
            return None
        now = r.t_end or time.perf_counter_ns()
        key = (r.model, r.speed)
        if now - self._last_headroom.get(key, 0) < 1_000_000_000:
            return None
        self._last_headroom[key] = now
        fields = []
        for name, value in r.rate_limits.items():
            if not value.isdigit():
                continue  # the reset times
            for prefix, scope in _HEADER_PREFIXES:
                if name.startswith(prefix):
                    fields.append(f"{scope}_{name[len(prefix) :].replace('-', '_')}={value}i")
        if not fields:
            return None
        return (
            f"{RATELIMIT},{self.common},model={_tag(r.model)},speed={_tag(r.speed)} "
            f"{','.join(fields)} {now + self.wall_offset_ns}"
        )

    def run_event_line(self, event: str, users: int, message: str = "") -> str:
        fields = f"users={users}i,text={_string_field(message or event)}"
        return f"{RUN},{self.common},event={_tag(event)} {fields} {time.time_ns()}"


class InfluxSink:
    """Buffers records and lines, and writes them from a background writer."""

    def __init__(self, settings: SinkSettings, formatter: LineFormatter) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.settings = settings
        self.formatter = formatter
        self.stats = SinkStats()
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token or "none",
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._writer: BackgroundWriter[ResultRecord | str] = BackgroundWriter(
            "loadkit-influxdb", self._run
        )
        self._drop_logged = 0.0
        self._line_file = (
            open(settings.line_file, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if settings.line_file
            else None
        )
        self._writer.start()

    # the hot path -------------------------------------------------------------------------
    def add(self, item: ResultRecord | str) -> None:
        """Queue a record (or a ready line). Never blocks, never raises."""
        buffer = self._writer.buffer
        if len(buffer) >= self.settings.max_buffered:
            self.stats.dropped += 1
            now = time.monotonic()
            if now - self._drop_logged > 5:
                self._drop_logged = now
                log.error(
                    "InfluxDB buffer full (%d points): %d points dropped so far",
                    self.settings.max_buffered,
                    self.stats.dropped,
                )
            return
        buffer.append(item)
        if len(buffer) >= self.settings.batch_size:
            self._writer.wake.set()

    # the writer -----------------------------------------------------------------------------
    def _lines(self, items: Iterable[ResultRecord | str]) -> list[str]:
        formatter = self.formatter
        lines = []
        for item in items:
            if isinstance(item, str):
                lines.append(item)
                continue
            lines.append(formatter.request_line(item))
            headroom = formatter.headroom_line(item)
            if headroom is not None:
                lines.append(headroom)
        return lines

    def _write_batch(self) -> bool:
        """Write up to one batch; True if the buffer had something and it was written."""
        buffer = self._writer.buffer
        count = min(len(buffer), self.settings.batch_size)
        if not count:
            return False
        items = [buffer[i] for i in range(count)]
        lines = self._lines(items)
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        rejected = 0
        try:
            self._write_api.write(
                bucket=self.settings.bucket,
                org=self.settings.org,
                record="\n".join(lines),
                # the client's constants are plain strings typed as its enum-like class
                write_precision=cast("WritePrecision", WritePrecision.NS),
            )
        except ApiException as err:
            status = int(err.status or 0)
            if not 400 <= status < 500 or status in RETRYABLE_STATUS:
                raise  # the server may take it later: kept, and retried
            # Refused as it stands (bad lines, a missing bucket, a bad token): sending the
            # batch again would be refused again. Dropped, counted, and said why.
            body = str(err.body or err.reason or "")
            rejected = rejected_points(status, body, len(lines))
            self.stats.rejected += rejected
            self.stats.dropped += rejected
            self.stats.rejection = f"HTTP {status}: {body[:300]}"
            log.error(
                "InfluxDB refused %d of %d points (HTTP %d): %s",
                rejected,
                len(lines),
                status,
                body[:300],
            )
        for _ in range(count):
            buffer.popleft()
        self.stats.written += len(lines) - rejected
        if self._line_file is not None:
            self._line_file.write("\n".join(lines) + "\n")
        return True

    def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                time.sleep(backoff)
            else:
                self._writer.wake.wait(self.settings.flush_interval_s)
                self._writer.wake.clear()
            try:
                while self._write_batch():
                    if (
                        len(self._writer.buffer) < self.settings.batch_size
                        and not self._writer.stopping
                    ):
                        break
                backoff = 0.0
            except Exception as err:  # any transport or server error: keep the batch, retry
                self.stats.failed_writes += 1
                backoff = min(self.settings.retry_max_backoff_s, max(0.25, backoff * 2))
                log.warning(
                    "InfluxDB write failed (%s); %d points buffered, retrying in %.1f s",
                    type(err).__name__,
                    len(self._writer.buffer),
                    backoff,
                )
            if self._writer.stopping and (not self._writer.buffer or self._writer.closed):
                return

    def close(self, timeout_s: float = 15.0) -> SinkStats:
        """Flush what is buffered (for at most ``timeout_s``), then stop; leftovers are dropped."""
        left = self._writer.stop(timeout_s)
        if left:
            self.stats.dropped += left
            log.error("InfluxDB: %d points could not be written before the deadline", left)
        if self._line_file is not None:
            self._line_file.close()
        self._client.close()
        return self.stats
