"""Pure-ASGI middleware: request ids, and per-request metrics labelled by model and endpoint.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or body copy per request.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.budget import ARRIVED, RELEASE
from app.observability.log import request_id
from app.observability.metrics import Metrics

_REQUEST_ID = b"x-request-id"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, model_exists: Callable[[str], bool]) -> None:
        self.app = app
        self.metrics = metrics
        self.model_exists = model_exists
        # Ids are a random per-process prefix and a counter: unique across processes and
        # replicas, at a fraction of uuid4's cost per request.
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._models_seen: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope[ARRIVED] = time.monotonic()  # where the request's deadlines count from
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
            release = scope.get(RELEASE)
            if release is not None:  # large-body bytes this request held
                release(scope)
            endpoint = scope.get("endpoint")
            if endpoint is not None:  # routed requests only: unknown paths would explode label cardinality
                # A mount (the docs assets) is an object, not a function: its class names it.
                name = getattr(endpoint, "__name__", type(endpoint).__name__)
                counter, latency = self._collectors(scope, name, status)
                counter.inc()
                latency.observe(time.perf_counter() - started)

    def _collectors(self, scope: Scope, endpoint: str, status: int) -> tuple[Any, Any]:
        """The labelled children, cached: `labels()` takes a lock and builds a key on every call."""
        # Only a model that exists is a label value: a client's string (an unknown model,
        # any name on a wrong method) would grow the series without bound.
        model = scope.get("path_params", {}).get("name", "")
        if model and model not in self._models_seen:
            if self.model_exists(model):
                self._models_seen.add(model)  # a model once served stays a valid label
            else:
                model = ""
        key = (model, endpoint, status)
        found = self._children.get(key)
        if found is None:
            found = (self.metrics.requests.labels(model, endpoint, str(status)),
                     self.metrics.request_latency.labels(model, endpoint))
            self._children[key] = found
        return found
