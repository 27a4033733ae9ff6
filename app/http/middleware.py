"""Pure-ASGI middleware: request ids, and per-request metrics labelled by model and endpoint.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or body copy per request.
"""

from __future__ import annotations

import itertools
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.budget import ARRIVED, RELEASE
from app.observability.access import RequestTiming, line, request_timing
from app.observability.log import request_id
from app.observability.metrics import RequestSeries
from app.observability.tracing import Observers

_REQUEST_ID = b"x-request-id"
_TRACE_ID = b"x-trace-id"  # a traced request's trace id (the caller's, where it sent one)


class RequestContext:
    def __init__(self, app: ASGIApp, series: RequestSeries, owner: Observers | None = None) -> None:
        self.app = app
        self.series = series
        self.owner = owner  # whose access log and tracer (the app's, once its lifespan has started)
        # Ids are a random per-process prefix and a counter: unique across processes and
        # replicas, at a fraction of uuid4's cost per request.
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        arrived = scope[ARRIVED] = time.monotonic()  # where the request's deadlines count from
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == _REQUEST_ID), None)
        rid = rid[:128] if rid else f"{self._prefix}{next(self._counter):08x}"
        token = request_id.set(rid)
        owner = self.owner
        access = owner.access_log if owner is not None else None
        tracing = owner.tracing if owner is not None else None
        awake = owner.keep_awake if owner is not None else None
        if awake is not None:
            awake.began()
        timing = traced_request = parent = None
        traced = False
        if access is not None or tracing is not None:  # the caller's trace context, read once
            parent = next((v for k, v in scope["headers"] if k == b"traceparent"), None)
        if tracing is not None:  # decided first: an unsampled request costs a random number
            traced = tracing.sampled(parent)
        if access is not None or traced:  # what its line and trace say is gathered as it is served
            timing = RequestTiming(arrived=arrived)
            timing_token = request_timing.set(timing)
            receive = _counted(receive, timing)
            if tracing is not None and traced:
                timing.traced, timing.arrived_ns = True, time.time_ns()
                state = next((v for k, v in scope["headers"] if k == b"tracestate"), None) if tracing.exporting else None
                traced_request = tracing.start(scope["method"], parent, state, timing)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message["headers"] = [*message.get("headers", []), (_REQUEST_ID, rid.encode("latin-1"))]
                if timing is not None:
                    timing.response_started = time.monotonic()
                    if timing.trace_id:
                        headers.append((_TRACE_ID, timing.trace_id.encode("ascii")))
            elif timing is not None:
                timing.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if awake is not None:
                awake.ended()
            request_id.reset(token)
            self._done(scope, status, started)
            if timing is not None:
                request_timing.reset(timing_token)
                line = _line(scope, status, timing, rid, started, parent)
                if access is not None:
                    access.write(line)
                if traced_request is not None and tracing is not None:
                    tracing.finish(traced_request, timing, f"{line['method']} {line['route']}", status,
                                   {"model": line["model"], "version": line["version"], "request_id": rid,
                                    "client": line["client"], "http.request.method": line["method"],
                                    "http.response.status_code": status})

    def _done(self, scope: Scope, status: int, started: float) -> None:
        """After any request: the large-body bytes it held, and its metrics."""
        release = scope.get(RELEASE)
        if release is not None:  # large-body bytes this request held
            release(scope)
        endpoint = scope.get("endpoint")
        if endpoint is not None:  # routed requests only: unknown paths would explode label cardinality
            # A mount (the docs assets) is an object, not a function: its class names it.
            name = getattr(endpoint, "__name__", type(endpoint).__name__)
            model = scope.get("path_params", {}).get("name", "")
            self.series.record(model, name, str(status), time.perf_counter() - started)


def _counted(receive: Receive, timing: RequestTiming) -> Receive:
    """`receive`, adding up the body bytes it hands over."""
    async def counted() -> Message:
        message = await receive()
        timing.bytes_in += len(message.get("body", b""))
        if not message.get("more_body", False):
            timing.body_done = time.monotonic()
        return message

    return counted


def _line(scope: Scope, status: int, timing: RequestTiming, rid: str, started: float,
          traceparent: bytes | None) -> dict[str, object]:
    """A request's access-log fields (app/observability/access.py `line`)."""
    route, client, extensions = scope.get("route"), scope.get("client"), scope.get("extensions")
    model = timing.model or scope.get("path_params", {}).get("name", "")[:128] or None
    tls = extensions.get("tls") if extensions else None
    return line(scope["method"], getattr(route, "path", None) or scope["path"][:256], status, model, timing, rid,
                traceparent, client[0] if client else None, time.perf_counter() - started,
                tls.get("client_cert_name") if tls else None)
