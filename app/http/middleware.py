"""Pure-ASGI middleware: request ids, and per-request metrics labelled by model and endpoint.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or body copy per request.
"""

from __future__ import annotations

import itertools
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.budget import ARRIVED, RELEASE
from app.observability.log import request_id
from app.observability.metrics import RequestSeries

_REQUEST_ID = b"x-request-id"


class RequestContext:
    def __init__(self, app: ASGIApp, series: RequestSeries) -> None:
        self.app = app
        self.series = series
        # Ids are a random per-process prefix and a counter: unique across processes and
        # replicas, at a fraction of uuid4's cost per request.
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

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
                model = scope.get("path_params", {}).get("name", "")
                self.series.record(model, name, str(status), time.perf_counter() - started)
