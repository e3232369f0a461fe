"""The writer thread a sink runs off the hot path: a buffer, a wake-up, and a bounded stop."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class BackgroundWriter(Generic[Item]):
    """Items buffered by the hot path and written by ``run`` on a daemon thread named ``name``.

    ``run`` waits on ``wake`` and returns once ``stopping`` is set and it has written what it
    could (or after ``closed`` is set, when the stop's deadline passed).
    """

    def __init__(self, name: str, run: Callable[[], None]) -> None:
        self.buffer: deque[Item] = deque()
        self.wake = threading.Event()
        self.stopping = False
        self.closed = False
        self._thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> int:
        """Let ``run`` write what is buffered for at most ``timeout_s``, then close: returns
        how many items were left unwritten (the buffer is emptied)."""
        self.stopping = True
        self.wake.set()
        self._thread.join(timeout_s)
        self.closed = True
        left = len(self.buffer)
        self.buffer.clear()
        return left
