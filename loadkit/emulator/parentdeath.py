"""Make an emulator process die with its parent, even a parent killed with SIGKILL.

On Linux the kernel sends SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``), set
first thing in the child and followed by a check that the parent is still the one that
started it (closing the race with a parent that died before); everywhere, a watchdog thread
polls the parent pid every second and stops the process when it changes (SIGTERM, then a
hard exit if the emulator has not stopped 5 s later).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_S = 1.0
STOP_GRACE_S = 5.0


def _set_parent_death_signal() -> None:
    """Linux: the kernel sends SIGTERM to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no usable libc; the watchdog stays
        pass


def _watch_parent(parent: int) -> None:
    """Stop this process once ``parent`` is no longer its parent (it died: we were adopted)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    print(f"loadkit emulator: parent process {parent} is gone, stopping", file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)  # the emulator's own orderly stop
    time.sleep(STOP_GRACE_S)
    os._exit(1)  # it did not stop in time


def tie_to_parent(parent: int, deathsig: bool = True) -> None:
    """Make this process die with ``parent``; exits at once if ``parent`` is already gone."""
    if deathsig:
        _set_parent_death_signal()
    # A parent that died before the line above sent no signal, and never will: check now.
    if os.getppid() != parent:
        print(f"loadkit emulator: parent process {parent} is gone", file=sys.stderr)
        raise SystemExit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
