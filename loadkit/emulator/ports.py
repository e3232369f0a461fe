"""The shared port of ``--processes``: sockets that several processes may bind (a leaf)."""

from __future__ import annotations

import socket


def bind_reusable(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that siblings may bind too (``SO_REUSEPORT``); the
    caller decides whether it listens."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock
