"""loadkit's console lines: on stderr, since stdout belongs to Locust (``--json``)."""

from __future__ import annotations

import sys


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)
