"""One prompt cache for every process of ``loadkit emulator --processes N``.

The supervising process keeps the only ``PromptCache`` (``CacheOwner``); each worker's
``RemoteCache`` asks it over a socket pair of its own (``SOCK_SEQPACKET``: one message per
call, no framing) and waits for the answer. So a prefix written by one process is read by
every other, with the single process's exact semantics (TTLs, refresh on read, the
``max_entries`` least recently used bound), and a write made at a request's first token is
in the cache before that token leaves: a client that waits for the first response, as the
prompt caching page asks for parallel requests, then hits on any process.

Only requests with cache breakpoints ask (one round trip to plan, one more to store what a
streamed request writes), tens of microseconds each on an idle supervisor; requests without
``cache_control`` never do. A reset clears the cache once, from the process that leads the
reset (``clear_all``); each worker's own ``clear`` has nothing to clear.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

from loadkit.emulator.cache import CacheOutcome, PromptCache
from loadkit.emulator.config import EmulatorConfig
from loadkit.emulator.prompt import Breakpoint

MAX_MESSAGE = 1 << 20


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class RemoteCache(PromptCache):
    """A worker's view of the owner's cache: every call is a blocking round trip."""

    def __init__(self, sock: socket.socket) -> None:  # no PromptCache init: no local entries
        self._sock = sock
        self._ttl = 1.0
        self._long_ttl = 1.0
        self._max = 1

    def _call(self, op: str, *args: Any) -> Any:
        self._sock.send(pickle.dumps((op, args), pickle.HIGHEST_PROTOCOL))
        reply = self._sock.recv(MAX_MESSAGE)
        if not reply:
            raise RuntimeError("the emulator's supervising process is gone")
        ok, value = pickle.loads(reply)
        if not ok:
            raise RuntimeError(f"prompt cache owner: {value}")
        return value

    @property
    def default_ttl_s(self) -> float:
        return self._ttl

    @default_ttl_s.setter
    def default_ttl_s(self, value: float) -> None:
        if value != self._ttl:
            self._ttl = self._call("set", "default_ttl_s", value)

    @property
    def long_ttl_s(self) -> float:
        return self._long_ttl

    @long_ttl_s.setter
    def long_ttl_s(self, value: float) -> None:
        if value != self._long_ttl:
            self._long_ttl = self._call("set", "long_ttl_s", value)

    @property
    def max_entries(self) -> int:
        return self._max

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        if value != self._max:
            self._max = self._call("set", "max_entries", value)

    def plan(self, breakpoints: list[Breakpoint], min_tokens: int, now: float) -> CacheOutcome:
        if not breakpoints:
            return CacheOutcome(0, 0, [])
        outcome: CacheOutcome = self._call("plan", breakpoints, min_tokens, now)
        return outcome

    def store(self, breakpoints: list[Breakpoint], now: float) -> None:
        if breakpoints:
            self._call("store", breakpoints, now)

    def clear(self) -> None:
        pass  # see clear_all

    def clear_all(self) -> None:
        """Empties the one cache, for every process."""
        self._call("clear")

    def __len__(self) -> int:
        size: int = self._call("len")
        return size


class CacheOwner:
    """The supervisor's side: the cache itself and one socket pair per worker."""

    def __init__(self, config: EmulatorConfig, workers: int) -> None:
        cache = config.cache
        self.cache = PromptCache(cache.default_ttl_s, cache.long_ttl_s, cache.max_entries)
        self._pairs = [_pair() for _ in range(workers)]

    @property
    def sockets(self) -> list[socket.socket]:
        """The owner's ends, one per worker."""
        return [owner for owner, _ in self._pairs]

    def worker_cache(self, index: int) -> RemoteCache:
        """In worker ``index`` after the fork: its cache, with every other end closed."""
        for i, (owner, worker) in enumerate(self._pairs):
            owner.close()
            if i != index:
                worker.close()
        return RemoteCache(self._pairs[index][1])

    def close_worker_ends(self) -> None:
        """In the supervisor after the forks."""
        for _, worker in self._pairs:
            worker.close()

    def answer(self, sock: socket.socket) -> bool:
        """Answers one call waiting on ``sock``; False when its worker has closed it."""
        try:
            data = sock.recv(MAX_MESSAGE)
        except ConnectionError:
            return False
        if not data:
            return False
        op, args = pickle.loads(data)
        cache = self.cache
        try:
            if op == "plan":
                value: Any = cache.plan(*args)
            elif op == "store":
                cache.store(*args)
                value = None
            elif op == "clear":
                cache.clear()
                value = None
            elif op == "len":
                value = len(cache)
            elif op == "set" and args[0] in ("default_ttl_s", "long_ttl_s", "max_entries"):
                setattr(cache, args[0], args[1])
                value = args[1]
            else:
                raise ValueError(f"unknown call {op!r}")
            reply = (True, value)
        except Exception as err:  # the worker raises it as its own
            reply = (False, f"{type(err).__name__}: {err}")
        sock.send(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
        return True
