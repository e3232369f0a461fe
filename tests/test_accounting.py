"""The end-of-run accounting: exact at every run end, and still strict about a real loss.

Unit tests of the invariants on hand-built counts, then real Locust runs whose every stop
cuts streams in flight: one web-UI Locust started and stopped 20 times over HTTP, and
headless ``-t`` runs with and without ``--stop-timeout``, all against one emulator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from loadkit import accounting
from loadkit.accounting import EmulatorCounters, compare, emulator_counts, reconcile
from loadkit.aggregate import Aggregate
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.emulator.stats import OUTCOMES

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "messages.py"
OPUS = "claude-opus-4-6"


# --- the invariants, on hand-built counts ---------------------------------------------------


def harness(outcomes: dict[str, int], requested: str = "fast") -> Aggregate:
    """An aggregate whose attempts ended as ``{"speed/outcome": n}``."""
    aggregate = Aggregate()
    aggregate.group(OPUS, requested).attempt_outcomes.update(outcomes)
    return aggregate


def emulator_row(speed: str, in_flight: int = 0, **ended: int) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(("queued", *OUTCOMES), 0)
    row.update(ended, model=OPUS, speed=speed, in_flight=in_flight)
    row["received"] = in_flight + sum(ended.values())
    return row


def stats(*rows: dict[str, Any]) -> dict[str, Any]:
    totals = Counter({"in_flight": 0, "received": 0})
    for row in rows:
        totals.update({k: v for k, v in row.items() if isinstance(v, int)})
    return {"by_model_speed": list(rows), "totals": dict(totals)}


def emulator(*rows: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    return emulator_counts(stats(*rows))


def test_every_attempt_matching_is_no_mismatch() -> None:
    ours = harness({"fast/ok": 10, "fast/rate_limited": 4, "standard/ok": 3, "fast/unsent": 2})
    theirs = emulator(
        emulator_row("fast", completed=10, rate_limited=4), emulator_row("standard", completed=3)
    )
    assert reconcile(ours, theirs) == []


def test_cancelled_attempts_the_server_had_answered_are_explained_not_flagged() -> None:
    # The defect's numbers: a 429 written just before the end, read by no one.
    ours = harness({"fast/ok": 100, "fast/rate_limited": 68, "fast/cancelled": 28})
    theirs = emulator(emulator_row("fast", completed=101, rate_limited=69, client_closed=26))
    result = compare(accounting.harness_counts(ours), theirs)
    assert result.problems == []
    assert result.gone == 28
    assert result.answered == {"completed": 1, "rate_limited": 1}
    assert result.gone_as["client_closed"] == 26
    # a timed-out attempt is one the client gave up on too
    ours = harness({"fast/ok": 5, "fast/timeout": 1, "fast/cancelled": 1})
    theirs = emulator(emulator_row("fast", completed=5, overloaded=1, client_closed=1))
    assert reconcile(ours, theirs) == []


def test_the_verdict_says_what_became_of_the_cancelled_attempts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ours = harness({"fast/ok": 100, "fast/rate_limited": 68, "fast/cancelled": 28})
    end = stats(emulator_row("fast", completed=101, rate_limited=69, client_closed=26))
    counters = EmulatorCounters.__new__(EmulatorCounters)
    counters.base_url, counters.baseline = "http://emulator.invalid", stats()
    counters._stats = lambda: end  # type: ignore[method-assign]
    section = accounting.reconcile_run(ours, counters)
    assert section.mismatches == []
    assert section.emulator_received == section.harness_sent == 196
    assert section.cancelled_or_timed_out == 28
    assert section.cancelled_closed_by_client == 26
    assert section.cancelled_answered_as == {"completed": 1, "rate_limited": 1}
    out, err = capsys.readouterr()
    assert out == ""  # stdout belongs to Locust
    assert err.startswith("accounting: all 196 attempts match the emulator's counters")
    assert "(28 cancelled or timed out before their answer was read" in err
    assert "1 as rate_limited" in err and "26 closed by the client" in err


@pytest.mark.parametrize(
    ("ours", "theirs", "flagged"),
    [
        # the emulator received an attempt the harness never counted (a lost record)
        (
            {"fast/ok": 10, "fast/rate_limited": 4},
            {"completed": 10, "rate_limited": 5},
            ["received: harness sent 14, emulator received 15", "0 attempts cancelled"],
        ),
        # ... even when the harness cancelled others: they cannot hide it
        (
            {"fast/ok": 10, "fast/rate_limited": 4, "fast/cancelled": 2},
            {"completed": 10, "rate_limited": 5, "client_closed": 2},
            ["received: harness sent 16, emulator received 17", "2 attempts cancelled"],
        ),
        # an attempt sent that the emulator never received
        (
            {"fast/ok": 10, "fast/cancelled": 2},
            {"completed": 10, "client_closed": 1},
            ["received: harness sent 12, emulator received 11", "2 attempts cancelled"],
        ),
        # a known outcome differing: the harness read ok, the server counted an error event
        (
            {"fast/ok": 10, "fast/cancelled": 1},
            {"completed": 9, "midstream_error": 1, "client_closed": 1},
            ["completed: harness 10, emulator 9", "2 outcomes beyond"],
        ),
        # a known outcome differing, with no cancellation to blame
        (
            {"fast/ok": 10, "fast/rate_limited": 2},
            {"completed": 10, "overloaded": 2},
            ["rate_limited: harness 2, emulator 0", "0 attempts cancelled"],
        ),
    ],
)
def test_a_real_loss_or_a_wrong_outcome_is_flagged(
    ours: dict[str, int], theirs: dict[str, int], flagged: list[str]
) -> None:
    problems = reconcile(harness(ours), emulator(emulator_row("fast", **theirs)))
    assert len(problems) == len(flagged), problems
    for line, expected in zip(problems, flagged, strict=True):
        assert line.startswith(f"{OPUS} fast") and expected in line


def test_a_cancelled_attempt_still_in_flight_at_the_emulator_is_flagged() -> None:
    # The client said it left, but the server never saw it go: its socket was left open.
    ours = harness({"fast/ok": 3, "fast/cancelled": 2})
    theirs = emulator(emulator_row("fast", in_flight=1, completed=3, client_closed=1))
    problems = reconcile(ours, theirs)
    assert len(problems) == 1 and "1 still in flight there" in problems[0]


def test_one_groups_cancellations_cannot_cover_anothers_loss() -> None:
    ours = harness({"fast/ok": 3, "fast/cancelled": 1, "standard/ok": 3})
    theirs = emulator(
        emulator_row("fast", completed=3, client_closed=1),
        emulator_row("standard", completed=3, rate_limited=1),
    )
    assert reconcile(ours, theirs) == [
        f"{OPUS} standard received: harness sent 3, emulator received 4",
        f"{OPUS} standard: 0 attempts cancelled or timed out, but the emulator counted 1 "
        "outcomes beyond the harness's known ones: rate_limited 1 (harness 0)",
    ]


def test_the_emulators_counts_are_read_once_every_attempt_sent_has_ended_there() -> None:
    """The last attempts reach the emulator after the harness gave up on them: a request
    written just before its greenlet was killed, and the close of its socket."""
    ours = harness({"fast/ok": 3, "fast/cancelled": 2})
    snapshots = iter(
        [
            stats(emulator_row("fast", completed=3)),  # the last request not received yet
            stats(emulator_row("fast", in_flight=2, completed=3)),  # its close not seen yet
            stats(emulator_row("fast", in_flight=1, completed=3, client_closed=1)),
            stats(emulator_row("fast", completed=3, client_closed=1, rate_limited=1)),
        ]
    )
    counters = EmulatorCounters.__new__(EmulatorCounters)
    counters.base_url, counters.baseline = "http://emulator.invalid", stats()
    counters._stats = lambda: next(snapshots)  # type: ignore[method-assign]
    theirs = counters.during_run(accounting.harness_counts(ours))
    assert reconcile(ours, theirs) == []
    assert theirs[(OPUS, "fast", "rate_limited")] == 1


# --- real run ends ---------------------------------------------------------------------------

# Opus at both speeds: streams of up to 3 s (standard) and 1.2 s (fast), so some are always in
# flight at a stop, and a fast-mode limit far below what the users ask, so that 429s are
# answered all the time and users wait in the SDK's retries (retry-after, with decimals) when
# the run ends.
EMULATOR_CONFIG: dict[str, Any] = {
    "models": {
        OPUS: {
            "ttft_base_ms": 40,
            "prefill_tokens_per_s": 200_000,
            "decode_tokens_per_s": 40,
            "ttft_jitter": 0.2,
            "decode_jitter": 0.2,
        }
    },
    "output_tokens": {"kind": "uniform", "min": 2, "max": 120},
    "tokens_per_delta": 1,
    "fast_mode": {"input_tokens_per_minute": 600_000, "output_tokens_per_minute": 6_000},
    "rate_limits": {
        "opus": {
            "requests_per_minute": None,
            "input_tokens_per_minute": None,
            "output_tokens_per_minute": None,
        }
    },
    "fractional_retry_after": True,
}
WORKLOAD: dict[str, Any] = {
    "name": "accounting",
    "models": [{"model": OPUS, "speeds": {"fast": 2, "standard": 1}}],
    "prompt_tokens": {"kind": "uniform", "min": 100, "max": 400},
    "max_tokens": {"kind": "fixed", "value": 128},
    "fallback": {"policy": "retry", "max_retries": 2},
}
USERS = 18
WEB_STOPS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = "test-key"
    return env


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One emulator for every run of this module, and the workload file."""
    folder = tmp_path_factory.mktemp("accounting")
    workload = folder / "workload.yaml"
    workload.write_text(yaml.safe_dump(WORKLOAD))
    with EmulatorProcess(config=EMULATOR_CONFIG, seed=7) as process:
        yield process.base_url, workload


class Emulator:
    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10)

    def totals(self) -> dict[str, int]:
        return self.http.get("/_emulator/stats").raise_for_status().json()["totals"]

    def settled(self) -> dict[str, int]:
        """The totals once no request is in flight (nothing else uses this emulator)."""

        def idle() -> dict[str, int] | None:
            totals = self.totals()
            return totals if totals["in_flight"] == 0 else None

        return wait_for("the emulator to settle", idle)


def check_section(section: dict[str, Any]) -> None:
    assert section["mismatches"] == []
    assert section["emulator_received"] == section["harness_sent"] > 0
    gone = section["cancelled_or_timed_out"]
    answered = sum(section["cancelled_answered_as"].values())
    assert section["cancelled_closed_by_client"] + answered == gone


@pytest.mark.slow
def test_web_ui_stops_with_streams_in_flight_reconcile_exactly(
    target: tuple[str, Path], tmp_path: Path
) -> None:
    """One web-UI Locust, started and stopped over HTTP 20 times, each stop cutting streams
    and SDK retry waits: every time, every attempt matches one emulator outcome."""
    base_url, workload = target
    emulator = Emulator(base_url)
    start_received = emulator.settled()["received"]
    port = free_port()
    summary = tmp_path / "summary.json"
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1",
             "--web-port", str(port), "--workload", str(workload), "--target-url", base_url,
             "--summary-json", str(summary)],
            cwd=ROOT, env=environ(), stdout=out, stderr=err,
        )  # fmt: skip
    web = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def logs() -> str:
        return out_path.read_text() + err_path.read_text()

    def web_up() -> bool:
        assert process.poll() is None, logs()[-3000:]
        try:
            return web.get("/").status_code == 200
        except httpx2.HTTPError:
            return False

    sections = []
    try:
        wait_for("Locust's web UI", web_up)
        for stop in range(1, WEB_STOPS + 1):
            before = emulator.totals()["received"]
            form = {"user_count": USERS, "spawn_rate": 1000, "host": base_url}
            assert web.post("/swarm", data=form).json()["success"]

            def busy(before: int = before) -> bool:
                totals = emulator.totals()
                return totals["in_flight"] >= 4 and totals["received"] - before >= USERS * 3 // 2

            def summarised(runs: int = stop) -> bool:
                return logs().count("loadkit: summary written to") >= runs

            # Stop once streams are in flight at the emulator and some attempts were made.
            wait_for(f"streams in flight (start {stop})", busy)
            assert web.post("/stop").json()["success"]
            wait_for(f"the summary of run {stop}", summarised)
            verdicts = [line for line in err_path.read_text().splitlines()
                        if line.startswith("accounting:")]  # fmt: skip
            assert len(verdicts) == stop
            assert verdicts[-1].startswith("accounting: all "), logs()[-3000:]
            section = json.loads(summary.read_text())["accounting"]
            check_section(section)
            # every stop cut streams: the harness gave up on some attempts
            assert section["cancelled_or_timed_out"] > 0, verdicts[-1]
            sections.append(section)
    finally:
        process.terminate()
        process.wait(timeout=30)
    # The runs' attempts are all the emulator received meanwhile.
    received = emulator.settled()["received"] - start_received
    assert sum(s["harness_sent"] for s in sections) == received
    # (Stops regularly catch attempts the server had answered, e.g. users waiting out a
    # 429's retry-after; before the fix, the first stop already reported a disagreement.)


@pytest.mark.slow
@pytest.mark.parametrize("stop_timeout", [None, "1s"])
def test_headless_run_time_expiry_reconciles_exactly(
    target: tuple[str, Path], tmp_path: Path, stop_timeout: str | None
) -> None:
    base_url, workload = target
    emulator = Emulator(base_url)
    start_received = emulator.settled()["received"]
    summary = tmp_path / "summary.json"
    extra = ["--stop-timeout", stop_timeout] if stop_timeout else []
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
         "-u", str(USERS), "-r", "1000", "-t", "3s", *extra, "--workload", str(workload),
         "--target-url", base_url, "--summary-json", str(summary)],
        cwd=ROOT, env=environ(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert summary.exists(), result.stderr[-3000:]
    section = json.loads(summary.read_text())["accounting"]
    verdicts = [line for line in result.stderr.splitlines() if line.startswith("accounting:")]
    assert len(verdicts) == 1 and verdicts[0].startswith("accounting: all "), result.stderr[-3000:]
    assert "accounting" not in result.stdout
    check_section(section)
    assert emulator.settled()["received"] - start_received == section["harness_sent"]
    if stop_timeout is None:  # the streams in flight at the end were cut
        assert section["cancelled_or_timed_out"] > 0
