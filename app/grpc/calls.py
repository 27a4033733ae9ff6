"""Every gRPC call, from its first frame: how many there are, and what one that does nothing holds.

grpc.aio's own limit (`maximum_concurrent_rpcs`) counts a call from its start to its end,
whatever it does meanwhile. A stream opened and left idle, or a unary call whose message
never comes (any client can open one through a generic stub), held its place for ever, and
max_grpc_calls of them had every other call refused RESOURCE_EXHAUSTED, the health checks
that Kubernetes' gRPC readiness probe makes and ServerLive included (measured: 8 idle
streams at `--max-grpc-calls 8`; ServerLive still refused 30 s later). So `CallGuard`, an
interceptor, takes every call of every service (inference, health, reflection) from its
start, and:

- a unary call's message must arrive within body_timeout_s, as an HTTP body must
  (DEADLINE_EXCEEDED otherwise);
- a call is *waiting* while it has nothing to do: a unary call before its message, a stream
  whose every message read has been answered (a health Watch between changes too); and a
  call whose answer, handed to gRPC, its client has not taken within send_timeout_s (an
  HTTP/2 window it never opens). At max_grpc_calls, a new call closes the call that has
  waited longest (UNAVAILABLE, which clients retry), as HTTP closes its longest idle
  connection at max_connections (app/http/connections.py); only when every call is working
  is the new one refused, RESOURCE_EXHAUSTED.

Calls whose answers nobody takes counted as working, and max_grpc_calls of them had every new
call refused for as long as their connection lasted (measured: at the defaults, 4,200 on one
connection, ServerLive refused 20 s later). Closed only when a place is needed, a client that
reads slowly (an answer taking longer than send_timeout_s) is still served in full while
there is room. What closing cannot do is end the call in gRPC core: grpc's Python API has no
way to, so its answer stays there until the client reads it or leaves (resetting the
connection instead would end other clients' calls behind an HTTP/2 proxy);
max_grpc_calls_per_connection (HTTP/2's stream limit, app/grpc/server.py) bounds how many
one connection leaves there.

Unary calls are served as stream-unary ones for this: grpc.aio reads a unary call's message
before any code of ours runs, with no time limit, and a call cancelled there is never
answered (its client waits on). Late messages are found by one sweep a second, not a timer
per call: with a timer the unary path lost 4-6% of its rate at c64, with the sweep nothing
measurable (docs/benchmarks.md, "Calls that hold a place"); streams are handed over as they are.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc

logger = logging.getLogger(__name__)


class _Call:
    """One call in the book: its task (closing a call cancels it), whether it is working,
    since when it has not been, and why it is being closed, if it is."""

    __slots__ = ("busy", "closing", "handed_at", "message_due", "task", "waiting_since")

    def __init__(self, task: asyncio.Task[Any] | None, message_due: float | None) -> None:
        self.task = task
        self.busy = 0  # messages read and not yet answered
        self.waiting_since = time.monotonic()
        self.message_due = message_due  # a unary call's: when its message must be in (None: in, or a stream)
        self.handed_at: float | None = None  # when the answer gRPC is writing was handed to it
        self.closing: tuple[grpc.StatusCode, str] | None = None

    def close(self, code: grpc.StatusCode, why: str) -> None:
        if self.closing is None and self.task is not None:
            self.closing = (code, why)
            self.task.cancel()

    def took(self) -> None:
        """A message read: the call is working until it is answered."""
        self.busy += 1
        self.message_due = None

    def idle_since(self, late: float) -> float | None:
        """Since when the call has waited on nothing the server can do (None while it works):
        it has nothing to do, or its client has not taken an answer handed over before `late`."""
        if not self.busy:
            return self.waiting_since
        if self.handed_at is not None and self.handed_at <= late:
            return self.handed_at
        return None

    def handing(self) -> None:
        """An answer handed to gRPC, to be written as its client takes it."""
        self.handed_at = time.monotonic()

    def handed(self) -> None:
        self.handed_at = None

    def answered(self) -> None:
        """A stream's message answered: its answer is on the wire."""
        self.handed_at = None
        self.busy -= 1
        if self.busy <= 0:
            self.busy = 0
            self.waiting_since = time.monotonic()


class CallBook:
    """The calls open now, against max_grpc_calls."""

    def __init__(self, limit: int, message_timeout_s: float, answer_timeout_s: float,
                 closed: Callable[[str], None] = lambda reason: None) -> None:
        """`closed(reason)`: each call closed or refused for its place (make_room,
        answer_late, message_late, refused), for the metrics."""
        self.limit = limit
        self.message_timeout_s = message_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.closed = closed
        self._calls: set[_Call] = set()

    def __len__(self) -> int:
        return len(self._calls)

    def open(self, unary: bool) -> _Call:
        """A new call's place (in the running task); at the limit, the longest-waiting call
        is closed to make it. `_Refused` when every call is working."""
        if len(self._calls) >= self.limit:
            self._make_room()
        call = _Call(asyncio.current_task(), time.monotonic() + self.message_timeout_s if unary else None)
        self._calls.add(call)
        return call

    def _make_room(self) -> None:
        """Close the call that has waited longest: with nothing to do, or on a client that
        takes no answer."""
        late = time.monotonic() - self.answer_timeout_s
        waiting = [(since, c) for c in self._calls if (since := c.idle_since(late)) is not None]
        if not waiting:
            self.closed("refused")
            raise _Refused(f"the server is handling max_grpc_calls ({self.limit}) calls, each of them working; "
                           "try again shortly")
        _, oldest = min(waiting, key=lambda since_call: since_call[0])
        self._calls.discard(oldest)
        if not oldest.busy:
            self.closed("make_room")
            why = "this call was closed while it waited with nothing to do"
        else:  # its client would not see this either: it takes nothing
            self.closed("answer_late")
            why = f"this call was closed as its answer was not taken within send_timeout_s ({self.answer_timeout_s:g} s)"
            logger.info("gRPC call closed: its client took no answer within send_timeout_s (%g s) and a new call "
                        "needed its place", self.answer_timeout_s)
        oldest.close(grpc.StatusCode.UNAVAILABLE,
                     f"{why}: the server was at max_grpc_calls ({self.limit}) and a new call needed its place; "
                     "call again")

    def leave(self, call: _Call, _: object = None) -> None:
        self._calls.discard(call)

    def close_late(self) -> None:
        """Close the unary calls whose message is past due (GrpcServer runs this every
        `sweep_every_s`: one sweep, not a timer per call, which cost the unary path more)."""
        now = time.monotonic()
        for call in [c for c in self._calls if c.closing is None and c.message_due is not None and c.message_due <= now]:
            self.closed("message_late")  # once: a call being closed is on its way out
            call.close(grpc.StatusCode.DEADLINE_EXCEEDED,
                       f"the request's message did not arrive within body_timeout_s ({self.message_timeout_s:g} s)")

    def sweep_every_s(self) -> float:
        return min(1.0, self.message_timeout_s / 4)


class _Refused(Exception):
    pass


CURRENT_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("grpc_call", default=None)
"""The call being handled, in its task: a stream's handler marks its messages taken and
answered on it (ModelStreamInfer does, app/grpc/service.py)."""


async def explain_closing(context: grpc.aio.ServicerContext) -> None:
    """In a handler that was cancelled: where the guard closed its call (to make room, or its
    message late), end it with the reason; where the client went away, do nothing."""
    call = CURRENT_CALL.get()
    if call is not None and call.closing is not None:
        code, why = call.closing
        logger.info("gRPC call closed: %s", why)
        await context.abort(code, why)


class CallGuard(grpc.aio.ServerInterceptor):
    """Every call through the book. A call's place is taken here, as grpc.aio looks up its
    handler and before it reads a byte of the message, in the call's task, and given back
    when that task ends. ModelStreamInfer is handed over as it is (a wrapper would cost each
    message two more generator steps): its handler says when it is working (`CURRENT_CALL`)
    and why it was closed; other streams (reflection's, health's Watch) are wrapped to say
    why, and count as waiting throughout."""

    def __init__(self, book: CallBook, explained: frozenset[str] = frozenset()) -> None:
        """`explained`: the streaming methods whose handlers end a closed call with its reason
        themselves (`explain_closing`); other streams are wrapped to."""
        self.book = book
        self.explained = explained
        self._guarded: dict[str, tuple[Any, Any]] = {}  # method -> (its handler, that handler as served)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None  # no such method: grpc answers UNIMPLEMENTED
        try:
            call = self.book.open(unary=not handler.request_streaming)
        except _Refused as e:
            return grpc.stream_unary_rpc_method_handler(partial(_refuse, str(e)))
        CURRENT_CALL.set(call)
        if call.task is not None:
            call.task.add_done_callback(partial(self.book.leave, call))
        if details.method in self.explained:
            return handler
        cached = self._guarded.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _guarded(handler))
            self._guarded[details.method] = cached
        return cached[1]


def _guarded(handler: Any) -> Any:
    """`handler` as served: one that reads a unary request's message itself (grpc.aio would
    read it before any code of ours, with no time limit), and ends a call the guard closed
    with its reason (cancelled with no status, its client would wait on). Every kind of
    handler becomes a stream-request one for this."""
    read, write = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming:
        behaviour, first = handler.stream_unary or handler.stream_stream, _the_stream
    else:
        behaviour = handler.unary_unary or handler.unary_stream
        first = _its_message_then_waits if handler.response_streaming else _message
    if not handler.response_streaming:
        async def unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                answer = await behaviour(await first(requests, context), context)
            except asyncio.CancelledError:
                await explain_closing(context)
                raise
            call = CURRENT_CALL.get()
            if call is not None:
                call.handing()  # grpc writes it once this returns; the call ends once it is on the wire
            return answer

        return grpc.stream_unary_rpc_method_handler(unary, read, write)
    if inspect.isasyncgenfunction(behaviour):
        async def answers(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = CURRENT_CALL.get()
            try:
                async for answer in behaviour(await first(requests, context), context):
                    if call is not None:
                        call.handing()
                    yield answer  # resumed once grpc has written it
                    if call is not None:
                        call.handed()
            except asyncio.CancelledError:
                await explain_closing(context)
                raise

        return grpc.stream_stream_rpc_method_handler(answers, read, write)

    async def writes(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        try:  # a handler that writes its answers itself (health's Watch does)
            await behaviour(await first(requests, context), context)
        except asyncio.CancelledError:
            await explain_closing(context)
            raise

    return grpc.stream_stream_rpc_method_handler(writes, read, write)


async def _the_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    return requests


async def _its_message_then_waits(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    """A server stream's request: after it, the call waits between its answers (closable then)."""
    request = await _message(requests, context)
    call = CURRENT_CALL.get()
    if call is not None:
        call.answered()
    return request


async def _message(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    """A unary call's one message (`CallBook.close_late` ends the wait at body_timeout_s)."""
    request = await context.read()  # not the request iterator: one generator step less per call
    if request is grpc.aio.EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
    call = CURRENT_CALL.get()
    if call is not None:
        call.took()
    return request


async def _refuse(why: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
    context.set_trailing_metadata((("retry-after", "1"),))
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
