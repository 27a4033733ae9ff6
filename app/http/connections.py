"""HTTP/1.1 connection limits a front-line server has, on uvicorn's httptools protocol.

uvicorn (0.54) with httptools bounds neither a request's head nor the time it takes: a
1 MB header, 100,000 headers or a head that never ends are read, a head sent one line a
second is waited for, a connection that never sends a byte is never closed (its
keep-alive timer starts only after a first response), and its `limit_concurrency` counts
idle connections, so enough of them answer every new request with 503, liveness too.
h11's `h11_max_incomplete_event_size` is the one knob it has, and only for h11, which is
several times slower per request. So `GuardedHttpToolsProtocol` subclasses uvicorn's
protocol and enforces, per connection:

- **head size and count**: more than `max_header_bytes` of head (counted as it arrives,
  read by read, and exactly once complete) or more than `max_header_count` headers is a
  431, then close;
- **head time**: from a request's first byte, its head must be complete within
  `header_timeout_s`, else 408, then close (a slowloris connection);
- **idle time**: a connection with no request running, new or between requests, is closed
  after `keep_alive_s` without a byte (uvicorn's keep-alive timer, armed on connect too);
- **unread bodies**: an answer sent before its request's body has fully arrived closes the
  connection, so a body dripped to a route that ignores it cannot hold it open for ever;
- **answers not taken**: an answer its client takes none of for `send_timeout_s` (the
  write buffer above its high-water mark and not shrinking) closes the connection, as
  nginx's send_timeout: ten clients that asked for 16 MB answers and read nothing held 180
  MB and their connections for as long as they stayed (measured; no limit ended them);
- **connections**: at `max_connections` (by default the open-file limit less a reserve and
  gRPC's share, app/descriptors.py, so accept never fails for want of descriptors), a new
  connection closes the longest
  idle one (no request running on it); only when every one is running a request is the
  new one answered 503. Idle or slow connections cannot keep liveness out.
- **TLS handshakes** (where the server ends TLS, `http_protocol`): `header_timeout_s` to
  finish, and counted toward `max_connections` meanwhile as idle connections. uvicorn's own
  TLS gave each uvloop's 60 s, counted toward nothing, so silent connections could hold
  descriptors beyond the limit. What the handshake settled (the client's certificate under
  mutual TLS) goes in each request's scope as ASGI's TLS extension (app/http/tls_scope.py).

The limits reach each connection through the lifespan's state (`LIMITS_STATE`), which
uvicorn hands to every protocol it creates.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import functools
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

import orjson
import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.descriptors import connection_limits
from app.http.tls_scope import tls_extension
from app.settings import Settings
from app.tls import HttpsContext, https_context

logger = logging.getLogger(__name__)

LIMITS_STATE = "ortserve.http_limits"
PROTOCOL = "app.http.connections:http_protocol"
LINGER_IDLE_S = 2.0
LINGER_MAX_S = 30.0
LINGER_BODY_BYTES = 64 << 20
LINGER_HEAD_BYTES = 1 << 20
"""After a refusal, what the client still sends is read and dropped until it pauses for
LINGER_IDLE_S, or for LINGER_MAX_S at most, and at most LINGER_BODY_BYTES of a body answered
before it arrived (LINGER_HEAD_BYTES after a refused head), before the connection closes:
closing with unread bytes makes the kernel reset the connection, and the client would lose
the answer it has not read yet (nginx's lingering close, with its lingering_timeout and
lingering_time)."""
@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float
    max_connections: int
    send_timeout_s: float
    tls: HttpsContext | None = None
    """Where set, every connection is TLS, ended in front of its protocol (`_CountedHandshake`)
    with the certificate current when it arrives."""

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        http, _ = connection_limits(settings.max_connections, settings.max_grpc_connections, settings.grpc)
        return cls(settings.max_header_bytes, settings.max_header_count, settings.header_timeout_s, http,
                   settings.send_timeout_s, https_context(settings))


@functools.cache
def _default_limits() -> HttpLimits:
    """For an app that does not hand its limits over (served with `uvicorn --http ...`)."""
    return HttpLimits.from_settings(Settings.model_construct())


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn is given for HTTP, wherever the service is started (python -m app, tests).
    The idle timeout is uvicorn's own keep-alive setting, which the protocol arms on connect too."""
    return {"http": PROTOCOL, "loop": "uvloop", "timeout_keep_alive": settings.keep_alive_s}


def http_protocol(config: Config, server_state: ServerState, app_state: dict[str, Any],
                  _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.BaseProtocol:
    """uvicorn's protocol for each connection it accepts (its `http` option, PROTOCOL): the
    guarded HTTP protocol, behind TLS where the limits carry a context."""
    http = GuardedHttpToolsProtocol(config, server_state, app_state, _loop)
    if http.limits.tls is None:
        return http
    kind: Any = _UvloopTls if isinstance(http.loop, uvloop.Loop) else _AsyncioTls  # the loop's own TLS protocol
    tls = kind(http.loop, http, http.limits.tls.current(), None, server_side=True,
               ssl_handshake_timeout=http.limits.header_timeout_s)
    tls.http = http
    return tls


class _CountedHandshake:
    """TLS ended in front of a connection's HTTP protocol by the event loop's own TLS protocol
    (uvloop's, which uvicorn's `ssl` options use), but under the HTTP limits: uvicorn's gave a
    handshake uvloop's 60 s and counted it toward no limit. Here the handshake has
    header_timeout_s, and while it lasts the connection counts toward max_connections as an
    idle one (closed first to make room)."""

    http: GuardedHttpToolsProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.handshaking(transport)  # type: ignore[arg-type]  # a stream's: it has abort()
        super().connection_made(transport)  # type: ignore[misc]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.http.handshake_lost()
        super().connection_lost(exc)  # type: ignore[misc]


class _UvloopTls(_CountedHandshake, uvloop.loop.SSLProtocol):  # type: ignore[name-defined]  # not in uvloop's stubs
    pass


class _AsyncioTls(_CountedHandshake, asyncio.sslproto.SSLProtocol):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: HttpLimits = self.app_state.get(LIMITS_STATE) or _default_limits()
        self.last_active = 0.0
        # uvicorn makes a new scope as each request's head begins: the head whose scope is
        # not the last completed one is still arriving.
        self._complete_head: object = None
        self._counted_head: object = None
        self._head_bytes = 0  # raw bytes of the head being counted, in earlier reads
        self._chunk_bytes = 0  # bytes of the read being parsed
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingered = 0
        self._linger_until = 0.0
        self._linger_bytes = 0
        self._made = False  # connection_made: for TLS, once its handshake is done
        self._tls: dict[str, Any] | None = None  # ASGI's TLS extension, for each request's scope

    # --- connections --------------------------------------------------------------

    def handshaking(self, transport: asyncio.Transport) -> None:
        """A TLS connection before its handshake (`_CountedHandshake`): counted, and idle."""
        self.transport = transport  # what a close to make room closes
        self.connections.add(self)
        self.last_active = self.loop.time()
        if not self._room_for_one_more():  # every connection busy, and no TLS yet to answer 503 in
            transport.abort()

    def handshake_lost(self) -> None:
        """The TLS connection ended; before its handshake was done, nothing else lets it go."""
        if not self._made:
            self.connections.discard(self)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._made = True
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # behind our TLS: its handshake is done
            self._tls = tls_extension(ssl_object)
        self.last_active = self.loop.time()
        if not self._room_for_one_more():
            self._refuse(503, "the server is at its connection limit and every connection is busy: try again")
            return
        self._arm_idle_timer()

    def _room_for_one_more(self) -> bool:
        """Whether this new connection may stay: under the limit, or once the longest idle
        connection (no request running) is closed to make room."""
        open_ = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(open_) < self.limits.max_connections:
            return True
        idle = [c for c in open_ if isinstance(c, GuardedHttpToolsProtocol) and c.idle]
        if not idle:
            return False
        min(idle, key=lambda c: c.last_active).transport.close()
        return True

    @property
    def idle(self) -> bool:
        """No request of this connection is in the app (a head still arriving does not count)."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _arm_idle_timer(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_send_timer()
        super().connection_lost(exc)

    # --- an answer its client does not take ---------------------------------------------

    def pause_writing(self) -> None:
        """The write buffer is over its high-water mark: from here, the client must take
        some of it every send_timeout_s."""
        super().pause_writing()
        self._cancel_send_timer()
        self._watch_sending(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._cancel_send_timer()
        super().resume_writing()

    def _watch_sending(self, left: int) -> None:
        self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._check_sending, left)

    def _check_sending(self, left_before: int) -> None:
        left = self.transport.get_write_buffer_size()
        if left < left_before:
            self._watch_sending(left)  # slow, but taking it
            return
        self._send_timer = None
        logger.info("closed a connection whose client took none of its answer for send_timeout_s (%g s)",
                    self.limits.send_timeout_s)
        # A reset, not a close: close() would wait to write what the client does not read, and
        # a closed socket still holds it in the kernel (the connection orphaned, not gone).
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # --- a request's head -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        if self._refused:  # lingering: what the client still sends is read and dropped
            self._lingered += len(data)
            if self._lingered > self._linger_bytes:
                self.transport.close()
            return
        self._chunk_bytes = len(data)
        super().data_received(data)  # parses: may begin a head, complete it, or both
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body:  # a body still arriving
            if cycle.response_complete and not self.pipeline:
                # Answered before its body arrived (a 413, a 503, a route that ignores its body):
                # the rest could trickle in for ever. Closed, lingering so the answer is read.
                self._close_unread()
                return
            if type(cycle.transport) is not _CycleTransport:  # the cycle's own closes must linger too
                cycle.transport = _CycleTransport(self)  # type: ignore[assignment]
        if self.scope is not self._complete_head:  # a head still incomplete after this data: counted, timed
            if self._counted_head is not self.scope:  # a new one: uvicorn makes a scope as a head begins
                self._counted_head, self._head_bytes = self.scope, 0
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request's head exceeds {self.limits.max_header_bytes} bytes")
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_too_slow)
        elif self.idle and self.timeout_keep_alive_task is None:
            self._arm_idle_timer()  # bytes that began no request (blank lines): still idle

    def on_headers_complete(self) -> None:
        # The checks cost nothing per header: a head that arrived within one read of at most
        # max_header_bytes is within the limit; only a larger read is measured exactly. Headers
        # are counted once the head is complete: the byte limit bounds how many can pile up.
        self._complete_head = self.scope
        if self._head_timer is not None:
            self._cancel_head_timer()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]  # ASGI types it loosely
        limits = self.limits
        earlier_reads = self._head_bytes if self._counted_head is self.scope else 0
        if len(self.headers) > limits.max_header_count:
            self._refuse(431, f"the request has {len(self.headers)} headers; at most "
                              f"{limits.max_header_count} are accepted")
        elif earlier_reads + self._chunk_bytes > limits.max_header_bytes and self._head_size() > limits.max_header_bytes:
            self._refuse(431, f"the request's head exceeds {limits.max_header_bytes} bytes")
        else:
            super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)  # ": ", CRLF

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.scope is not self._complete_head and not self.transport.is_closing():
            self._refuse(408, f"the request's head did not arrive within {self.limits.header_timeout_s:g} s")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # --- after an answer --------------------------------------------------------------

    def _close_unread(self) -> None:
        if not self._refused:
            self._refused = True
            self.flow.resume_reading()  # uvicorn pauses reading while a body waits to be read
            self._close_lingering(LINGER_BODY_BYTES)

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with the service's JSON error, then close the connection."""
        self._refused = True
        if self.cycle is None or not self.cycle.response_complete:
            self.cycle = _Refused()  # type: ignore[assignment]  # uvicorn's callbacks drop what the parser still gives
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        body = orjson.dumps({"error": message})
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)
        if status == 503:
            head += b"retry-after: 1\r\n"
        self.transport.write(STATUS_LINE[status] + head + b"\r\n" + body)
        self._close_lingering(LINGER_HEAD_BYTES)

    def _close_lingering(self, max_bytes: int) -> None:
        """Our side closed after the answer; what the client still sends is read and dropped
        (data_received) until the client pauses LINGER_IDLE_S, LINGER_MAX_S at most, or sends
        more than `max_bytes`; then the connection closes."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the answer, then our end closed; the client's end is read
        self._linger_bytes = max_bytes
        self.last_active = self.loop.time()
        self._linger_until = self.last_active + LINGER_MAX_S
        self.loop.call_later(LINGER_IDLE_S, self._linger_or_close)

    def _linger_or_close(self) -> None:
        now = self.loop.time()
        if self.transport.is_closing():
            return
        quiet_since = self.last_active + LINGER_IDLE_S
        if now >= quiet_since or now >= self._linger_until:
            self.transport.close()
        else:
            self.loop.call_later(min(quiet_since, self._linger_until) - now, self._linger_or_close)


class _CycleTransport:
    """What uvicorn's request cycle writes to: the connection's transport, except that a
    close while the request's body is still arriving lingers (a 408, a 413 or a 503 to a
    request that said Connection: close), so the client reads the answer first."""

    __slots__ = ("_protocol", "_transport", "write", "is_closing")

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self.write = self._transport.write
        self.is_closing = self._transport.is_closing

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.more_body:
            self._protocol._close_unread()
        else:
            self._transport.close()


class _Refused:
    """Stands in for uvicorn's request cycle on a refused connection: a finished one, so that
    uvicorn's parser callbacks (on_body, on_message_complete) drop whatever still arrives."""

    response_complete = True
    more_body = False

    def __init__(self) -> None:
        self.message_event = asyncio.Event()
