"""The process's file descriptors, shared out between HTTP's and gRPC's connections.

Both transports take a descriptor per connection from one open-file limit, and what runs
out first fails for both: 390 idle gRPC connections (an HTTP/2 preface each, no call) under
an open-file limit of 400 had every HTTP request reset, liveness too, while gRPC core logged
"File descriptor limit reached. Retrying." So each transport has its own bound, and by
default the two bounds, with a reserve for what is not a connection, fit the limit: gRPC a
quarter (its clients keep one connection for many calls), HTTP the rest.
"""

from __future__ import annotations

import resource

RESERVE = 128
"""Descriptors kept for what is not a connection: model files, logs, metrics, the listeners."""
GRPC_SHARE = 0.25


def for_connections() -> int:
    """The open-file limit less RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - RESERVE)


def connection_limits(max_connections: int | None, max_grpc_connections: int | None,
                      grpc: bool) -> tuple[int, int]:
    """(HTTP's, gRPC's) connections per worker: as set, else shared out of `for_connections`
    (gRPC's share only where gRPC is served; 0 where it is not)."""
    budget = for_connections()
    grpc_limit = (max_grpc_connections or max(8, int(budget * GRPC_SHARE))) if grpc else 0
    http_limit = max_connections or max(16, budget - grpc_limit)
    return http_limit, grpc_limit
