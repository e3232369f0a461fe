"""Command-line options, also shown in the web UI's start form ("Custom parameters").

Names are lowercase words joined by single dashes, with no digits: the web UI loses edits of
options whose names contain digits. Options are added to the parser itself, not to a group,
since grouped options are hidden from the web UI. The API key is never an option: it is read
from ANTHROPIC_API_KEY only.
"""

from __future__ import annotations

from typing import Any

from loadkit.client import HTTP_STACKS
from loadkit.fallback import POLICIES


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
        "--fallback",
        default="",
        choices=["", *POLICIES],
        help="Fast-mode 429 policy, overriding the workload's fallback.policy: none (a 429 "
        "fails), retry (the SDK waits retry-after), standard (re-issue at standard speed), "
        "retry-then-standard",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="Seconds without progress before a request counts as timed out",
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
