"""Free loopback ports for the servers the load tools and tests start."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, and none this process was given before: the kernel may offer
    a port again as soon as the socket that found it closes, and a server's HTTP and gRPC
    ports, asked for one after the other, once came back the same (the server refused to
    start, and a CI run failed on it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
