"""Pure-ASGI middleware: request ids, and per-request metrics labelled by model and endpoint.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or body copy per request.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.log import request_id
from app.metrics import Metrics

_REQUEST_ID = b"x-request-id"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Ids are a random per-process prefix and a counter: unique across processes and
        # replicas, at a fraction of uuid4's cost per request.
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == _REQUEST_ID), None)
        rid = rid[:128] if rid else f"{self._prefix}{next(self._counter):08x}"
        token = request_id.set(rid)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (_REQUEST_ID, rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            endpoint = scope.get("endpoint")
            if endpoint is not None:  # routed requests only: unknown paths would explode label cardinality
                counter, latency = self._collectors(scope, endpoint.__name__, status)
                counter.inc()
                latency.observe(time.perf_counter() - started)

    def _collectors(self, scope: Scope, endpoint: str, status: int) -> tuple[Any, Any]:
        """The labelled children, cached: `labels()` takes a lock and builds a key on every call."""
        # A 404 names no model that exists: any client string would become a label value.
        model = "" if status == 404 else scope.get("path_params", {}).get("name", "")
        key = (model, endpoint, status)
        found = self._children.get(key)
        if found is None:
            found = (self.metrics.requests.labels(model, endpoint, str(status)),
                     self.metrics.request_latency.labels(model, endpoint))
            self._children[key] = found
        return found
