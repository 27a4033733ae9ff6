"""What one request may take: its deadline (from arrival, optionally shorter on request),
how long its body may take to arrive, and whether its client is still there.

The deadline of a request starts when it arrives (app/http/middleware.py stamps the
scope), not when it is queued: time spent reading and decoding counts. A client may ask
for less time (V2 `parameters.timeout` in microseconds, as Triton's clients send it; the
`Request-Timeout-Ms` header on V1), never for more than the server's request_timeout_s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.requests import Request

from app.deadlines import Deadlines
from app.errors import InvalidInput, PayloadTooLarge, QueueFull, RequestTimeout
from app.http.encodings import coding_of, unpacked
from app.http.responses import header
from app.offload import HEAVY_BODY_BYTES, Offload
from app.protocol.values import positive_timeout
from app.settings import Settings
from app.tuning import MemoryReturn

ARRIVED = "ortserve.arrived"
RELEASE = "ortserve.release"
"""A request that holds large-body bytes keeps here what gives them back; app/http/middleware.py
calls it when the request ends, however it ends."""
TIMEOUT_HEADER = b"request-timeout-ms"
_HELD = "ortserve.large_body_bytes"
TRIM_AFTER_S = 0.5
"""Once no large body is held, free heap pages go back to the system this much later."""


class _BodyRead:
    """A body being read, for the body timer: interrupting it cancels the reading task."""

    __slots__ = ("expired", "finished", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task, self.finished, self.expired = task, False, False

    def done(self) -> bool:
        return self.finished


def _interrupt(read: _BodyRead, _: float) -> None:
    read.expired = True
    read.task.cancel()


class LargeBodies:
    """Bytes of large bodies (over HEAVY_BODY_BYTES) held by requests right now, against one
    limit: each body is bounded by max_body_bytes, this bounds them together (twenty 8 MB
    bodies at once were 378 MB resident). When the last one is given back, the heap's free
    pages are returned to the system (app/tuning.py `return_free_memory`), where trim_memory is on."""

    def __init__(self, limit: int, retry_after_s: int, trim_memory: bool) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.held = 0
        self.memory = MemoryReturn(TRIM_AFTER_S, unless=lambda: self.held > 0) if trim_memory else None

    def take(self, scope: MutableMapping[str, Any], size: int) -> None:
        if self.held + size > self.limit:
            raise QueueFull(f"the server is reading {self.held:,} bytes of large bodies already (limit "
                            f"{self.limit:,}); try again shortly", self.retry_after_s)
        self.held += size
        scope[_HELD] = scope.get(_HELD, 0) + size
        scope[RELEASE] = self.release

    def release(self, scope: MutableMapping[str, Any]) -> None:
        size = scope.pop(_HELD, 0)
        self.held -= size
        if size:
            self.freed()

    def freed(self) -> None:
        """Large bytes were let go (a body's, or one unpacked past the limit and refused,
        which was never held): the heap's free pages go back once none is held."""
        if self.held == 0 and self.memory is not None:
            self.memory.ask()


class RequestBudget:
    def __init__(self, settings: Settings, offload: Offload) -> None:
        self._offload = offload  # unpacks compressed bodies: a small one can unpack to max_body_bytes
        self.large_bodies = LargeBodies(settings.large_bodies_limit_bytes, settings.retry_after_s,
                                        settings.trim_memory)
        self.max_timeout_s = settings.request_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.max_body_bytes = settings.max_body_bytes
        self.max_response_bytes = settings.response_limit_bytes
        # One loop timer for every body being read (app/deadlines.py), not one per request.
        self._body_timer = Deadlines(_interrupt)

    @staticmethod
    def arrived(request: Request) -> float:
        arrived: float | None = request.scope.get(ARRIVED)
        return arrived if arrived is not None else time.monotonic()

    def deadline_from(self, arrived: float, requested_s: float | None = None) -> tuple[float, float]:
        """(due as time.monotonic(), timeout in seconds): the client's, at most the server's."""
        timeout = self.max_timeout_s if requested_s is None else min(requested_s, self.max_timeout_s)
        return arrived + timeout, timeout

    @staticmethod
    def requested_timeout_s(request: Request) -> float | None:
        """The V1 `Request-Timeout-Ms` header's timeout, in seconds."""
        value = header(request, TIMEOUT_HEADER)
        return None if value is None else positive_timeout(value, "Request-Timeout-Ms header", 1e-3)

    async def read_body(self, request: Request) -> bytes:
        """The whole body, at most max_body_bytes (else 413), within body_timeout_s of the
        request's arrival (else 408, and the connection is closed); one sent compressed
        (Content-Encoding gzip or deflate: app/http/encodings.py) unpacked, on a decode
        thread, at most max_body_bytes unpacked too."""
        limit = self.max_body_bytes
        declared = encoding = None
        for key, value in request.scope["headers"]:  # one pass for both: every request's path
            if key == b"content-length" and declared is None:
                declared = value.decode("latin-1")
            elif key == b"content-encoding" and encoding is None:
                encoding = value.decode("latin-1")
        coding = coding_of(encoding) if encoding is not None else None
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInput(f"Content-Length must be a number, got {declared!r}")
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        counted = 0  # of this body's bytes, those taken from the large-body limit
        if declared is not None and int(declared) > HEAVY_BODY_BYTES:
            counted = int(declared)
            self.large_bodies.take(request.scope, counted)
        # A body that arrived whole with its headers (most small ones) is read without
        # waiting: no timer to set and clear for it.
        task = None if _arrived_whole(request) else asyncio.current_task()
        read = _BodyRead(task) if task is not None else None
        if read is not None:
            self._body_timer.watch(read, self.arrived(request) + self.body_timeout_s, self.body_timeout_s)
        chunks, size = [], 0  # also counts as it streams in: chunked bodies declare no length
        try:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise InvalidInput("the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if size > HEAVY_BODY_BYTES and size > counted:  # a chunked body growing large
                    self.large_bodies.take(request.scope, size - counted)
                    counted = size
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if read is None or not read.expired:
                raise
            read.task.uncancel()
            raise RequestTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s") from None
        finally:
            if read is not None:
                read.finished = True
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return body if coding is None else await self._unpacked(request, body, coding)

    async def _unpacked(self, request: Request, body: bytes, coding: str) -> bytes:
        try:
            body = await self._offload.run(unpacked, body, coding, self.max_body_bytes)
        except PayloadTooLarge:  # up to max_body_bytes were unpacked, on a decode thread's heap
            self.large_bodies.freed()
            raise
        if len(body) > HEAVY_BODY_BYTES:  # held as a large body is, whatever it was packed
            self.large_bodies.take(request.scope, max(len(body) - request.scope.get(_HELD, 0), 0))
        return body

    def check_response(self, size_bound: int, rows: int) -> None:
        """413 for a request whose answer could exceed max_response_bytes: refused before any
        work, since the answer is built in memory whole."""
        if size_bound > self.max_response_bytes:
            raise PayloadTooLarge(f"the response to this request could take {size_bound:,} bytes ({rows:,} rows of "
                                  f"the outputs asked for), over the limit of {self.max_response_bytes:,} bytes: "
                                  "send fewer rows or ask for fewer outputs")


def _uvicorn_cycle(request: Request) -> Any:
    """uvicorn's request cycle, whose `receive` the request reads (None behind a wrapper or
    another server): what it knows of the connection costs nothing to ask."""
    return getattr(request.receive, "__self__", None)


def _arrived_whole(request: Request) -> bool:
    """Whether uvicorn's request cycle already holds the whole body, so that reading it
    cannot wait on the client (false where the server cannot tell: then the timer runs)."""
    cycle = _uvicorn_cycle(request)
    event = getattr(cycle, "message_event", None)
    return getattr(cycle, "more_body", True) is False and event is not None and event.is_set()


def client_gone(request: Request) -> Callable[[], bool] | None:
    """A check of whether the client has hung up, where the server can tell without a
    task per request: uvicorn's request cycle keeps a `disconnected` flag."""
    cycle = _uvicorn_cycle(request)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: bool(cycle.disconnected)

