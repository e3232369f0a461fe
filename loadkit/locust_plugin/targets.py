"""Which targets may receive the API key: only those the operator chose when starting.

The key (``ANTHROPIC_API_KEY``) goes to a target given at start (``--target-url``, ``-H``,
``ANTHROPIC_BASE_URL``) or listed in ``--allowed-targets``. A target typed into the web UI's
form later is refused, unless it is a loadkit emulator. An emulator, wherever it runs, gets a
placeholder key, never the real one, and needs no spending cap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from loadkit.accounting import EmulatorCounters
from loadkit.redact import redact_url

DEFAULT_PORTS = {"http": 80, "https": 443}
KeyKind = Literal["real", "emulator"]


class TargetRefused(ValueError):
    """A target the API key may not be sent to; the message says why and what to do."""


def normalize(url: str) -> str:
    """``scheme://host:port/path``, lowercased host, default port written out, no end slash."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return url.strip()
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


def add_options(parser: Any) -> None:
    parser.add_argument(
        "--allowed-targets",
        default="",
        include_in_web_ui=False,
        help="Comma-separated base URLs that may be chosen as the target in the web UI and "
        "receive the API key, besides the one given at start",
    )


@dataclass(frozen=True)
class TargetPolicy:
    allowed: frozenset[str]

    @classmethod
    def at_start(cls, options: Any, host: str | None) -> TargetPolicy:
        """The targets the operator chose when starting the process."""
        given = [
            getattr(options, "target_url", "") or "",
            host or "",
            os.environ.get("ANTHROPIC_BASE_URL", ""),
            *(getattr(options, "allowed_targets", "") or "").split(","),
        ]
        return cls(frozenset(normalize(url) for url in given if url.strip()))

    def key_for(self, target: str) -> KeyKind:
        """Which key ``target`` gets; raises TargetRefused if neither.

        A loadkit emulator (it answers ``/_emulator/stats``) gets the placeholder, wherever it
        runs and whoever chose it: it needs no key and costs nothing."""
        if EmulatorCounters(target).available:
            return "emulator"
        if normalize(target) in self.allowed:
            return "real"
        raise TargetRefused(
            f"the target {redact_url(target)} was not chosen at start: give it with "
            "--target-url or --allowed-targets when starting Locust (the API key goes to "
            "no other target)"
        )
