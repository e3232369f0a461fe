"""Command-line options, also shown in the web UI's start form ("Custom parameters").

Names are lowercase words joined by single dashes, with no digits: the web UI loses edits of
options whose names contain digits. Options are added to the parser itself, not to a group,
since grouped options are hidden from the web UI. The API key is never an option: it is read
from ANTHROPIC_API_KEY only.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from loadkit.client import HTTP_STACKS
from loadkit.fallback import POLICIES

MAX_REQUEST_TIMEOUT_S = 86_400.0  # a day: any longer is a typo, and timers must stay finite


def _timeout_problem(value: float) -> str:
    """Why ``value`` is not a usable --request-timeout, or "" if it is."""
    if not (math.isfinite(value) and 0 < value <= MAX_REQUEST_TIMEOUT_S):
        return (
            f"must be a number of seconds S with 0 < S <= {MAX_REQUEST_TIMEOUT_S:g}, not {value:g}"
        )
    return ""


def request_timeout(text: str) -> float:
    """argparse type of --request-timeout: finite seconds, > 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    problem = _timeout_problem(value)
    if problem:
        # argparse prefixes "argument --request-timeout: "
        raise argparse.ArgumentTypeError(problem.replace(f"not {value:g}", f"not {text!r}"))
    return value


def check_options(options: Any) -> None:
    """ValueError naming the option for values the parser's types did not see.

    The web UI's start form converts its fields with the type of their current value (float),
    not with the parser's types: call this when a run starts.
    """
    problem = _timeout_problem(float(getattr(options, "request_timeout", 600.0)))
    if problem:
        raise ValueError(f"--request-timeout {problem}")


def add_options(parser: Any) -> None:
    # Runs on every page load of the web UI: no side effects here.
    parser.add_argument(
        "--workload",
        default="workloads/default.yaml",
        help="Workload file (YAML): the mix of models, speeds, prompt and output sizes",
    )
    parser.add_argument(
        "--target-url",
        default="",
        help="Messages API base URL; else Locust's host (-H), else ANTHROPIC_BASE_URL; "
        "with none of them, the embedded emulator is started on a free loopback port",
    )
    parser.add_argument(
        "--emulator-config",
        default="",
        help="YAML config for the embedded emulator (see docs/emulator-config.yaml)",
    )
    parser.add_argument(
        "--summary-json",
        default="",
        help="Write the end-of-run summary as JSON to this path",
    )
    parser.add_argument(
        "--records",
        default="",
        help="Write every request's result record to this JSON Lines file, for loadkit "
        "calibrate (workers each write their own: PATH-workerN before its suffix)",
    )
    parser.add_argument(
        "--fallback",
        default="",
        choices=["", *POLICIES],
        help="Fast-mode 429 policy, overriding the workload's fallback.policy: none (a 429 "
        "fails), retry (the SDK waits retry-after), standard (re-issue at standard speed), "
        "retry-then-standard",
    )
    parser.add_argument(
        "--request-timeout",
        type=request_timeout,
        default=600.0,
        help="Seconds without progress before a request counts as timed out "
        f"(more than 0, at most {MAX_REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--http-stack",
        default="lean",
        choices=list(HTTP_STACKS),
        help="lean: loadkit's own HTTP/1.1 transport (direct connections, cheapest per "
        "token); httpx: httpx's standard transport (honours HTTPS_PROXY and the like)",
    )
    parser.add_argument(
        "--workload-seed",
        type=int,
        default=0,
        help="Seed for the workload's draws (0: a different one every run)",
    )
