"""The HTTP port of several worker processes: a listening socket per worker, so the kernel
spreads new connections evenly across them.

uvicorn's workers share the one socket its parent binds: each new connection wakes every
worker, and whichever accepts first takes it, often in a run (uvloop accepts all that wait).
A burst of connections, a client or load balancer opening its pool, lands mostly on one
worker: 62 and 63 of wrk's 64 in two of six runs here, which left one event loop doing
the work of two (docs/benchmarks.md, "A listening socket per worker"). With a socket per
worker, each bound to the address with SO_REUSEPORT, Linux picks the worker for each
connection from a hash of its addresses, as for the workers' gRPC port (app/grpc/server.py).

The cost: a worker that exits (a crash, a restart) closes its socket, and the kernel resets
the connections still waiting in that socket's queue, where a shared socket would have kept
them for the other workers; net.ipv4.tcp_migrate_req = 1 (Linux 5.14+) makes the kernel hand
them to another socket of the port instead. Measured in docs/benchmarks.md ("A worker's
queue when it dies"); `reuse_port` off keeps one shared socket.

The parent binds one as well and never listens on it: it holds the address while workers
come and go (no other program can take it: SO_REUSEPORT binds only join sockets of the
same user that set it too), and resolves port 0 to one port for every worker. uvicorn
hands each worker the sockets it is given by pickling them (spawn); a `WorkerSocket`
unpickles as a socket newly bound in that worker.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PER_WORKER = sys.platform == "linux"
"""Linux spreads a port's connections over its SO_REUSEPORT sockets; elsewhere (macOS gives
them all to one) the workers share uvicorn's socket as before."""

MIGRATE_SETTING = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def queue_moves_on_exit(setting: Path = MIGRATE_SETTING) -> bool | None:
    """Whether the kernel hands the connections waiting in a closing listening socket's queue
    to another socket of its SO_REUSEPORT group (net.ipv4.tcp_migrate_req, per network
    namespace); None where it has no such setting (before Linux 5.14, not Linux)."""
    try:
        return setting.read_text().strip() != "0"
    except OSError:
        return None


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening (uvicorn's
    server listens on it, with its backlog)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


_OWN: list[socket.socket] = []
"""The sockets this worker bound for itself (as it unpickled its WorkerSocket)."""


def _bind_own(host: str, port: int) -> socket.socket:
    sock = bind(host, port)
    _OWN.append(sock)
    return sock


def accepting() -> bool:
    """Whether this worker's own sockets listen (are in the kernel's group for the port):
    from the moment its server starts until it closes them. A worker's models are ready a
    moment before that, so its readiness report asks this too (app/repository/shared.py):
    ready then means every worker takes connections. True where it has none of its own (it
    shares the parent's socket, which listens before any worker starts)."""
    for sock in _OWN:
        try:
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return False
        except OSError:  # closed (the server has stopped)
            return False
    return True


@dataclass(frozen=True)
class WorkerSocket:
    """Stands in uvicorn's list of sockets for the one each worker binds as it starts."""

    host: str
    port: int

    def __reduce__(self) -> tuple[Any, ...]:
        return _bind_own, (self.host, self.port)
