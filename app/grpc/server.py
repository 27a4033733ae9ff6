"""The gRPC server: the V2 inference service (service.py), the standard health service and
server reflection, on `grpc_port` and on the event loop that serves HTTP.

Health answers from the same readiness as /v2/health/ready (every model that should serve
does, and no drain): Check reads it on each call; Watch streams its changes, polled every
HEALTH_POLL_S. On SIGTERM it turns NOT_SERVING with HTTP's readiness; when HTTP's listener
closes, so does this server (`begin_stop`): calls already accepted have shutdown_grace_s
to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from app.descriptors import connection_limits
from app.grpc.calls import CallBook, CallGuard
from app.grpc.service import SERVICE, InferenceService
from app.settings import Settings
from app.tls import Renewal, TlsFiles, server_context, tls_files

logger = logging.getLogger(__name__)

HEALTH_POLL_S = 0.5
IDLE_CONNECTION_S = 300
"""A connection with no call for this long is closed (the client reconnects when it next
calls): idle connections must not pile up, yet gRPC clients keep theirs for many calls."""
KEEPALIVE_TIMEOUT_S = 20
"""How long a ping of the server's waits for its answer before the connection is closed (gRPC's default)."""
SEND_SLACK_BYTES = 1 << 20
"""Room above max_response_bytes for a message's framing: answers are bounded before they are
computed (app/inference.py), so this limit only catches what that bound missed."""


class _Health(health_aio.HealthServicer):
    """grpc.health.v1.Health whose Check reads readiness at the time of the call."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready

    def status(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return health_pb2.HealthCheckResponse.SERVING if self._ready() else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                    ) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r} here")
        return health_pb2.HealthCheckResponse(status=self.status())


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(files.key, files.cert_chain)], root_certificates=files.client_ca)


def _checked_configuration(settings: Settings) -> grpc.ServerCertificateConfiguration:
    """The files as gRPC's certificate, once they load together (TlsError where not)."""
    server_context(settings)
    files = tls_files(settings)
    assert files is not None  # renewed only where TLS is on
    return _configuration(files)


class _RenewedCertificate:
    """gRPC's side of app/tls.py's renewal: grpc core asks before each new connection's
    handshake (on its own thread) whether the certificate changed."""

    def __init__(self, settings: Settings) -> None:
        self.renewal = Renewal(settings, _checked_configuration, "gRPC")

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            return self.renewal.renewed()
        except Exception:  # grpc core's thread: whatever happens, the current certificate stays
            logger.exception("checking the TLS files for a renewal failed: gRPC goes on with the previous certificate")
            return None


def keepalive_options(keepalive_s: float, client_ping_s: float) -> list[tuple[str, int]]:
    """gRPC core's keepalive for a server (grpc's doc/keepalive.md): its own pings, and the
    clients' it accepts."""
    options = [
        # A client's pings are accepted this often while nothing is sent to it, with or
        # without calls: a ping outside that is a strike, and the third closes the connection.
        ("grpc.http2.min_ping_interval_without_data_ms", int(client_ping_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if keepalive_s > 0:
        timeout_ms = int(min(KEEPALIVE_TIMEOUT_S, keepalive_s) * 1000)
        options += [("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                    # core's newer ping machinery waits ping_timeout (a minute by default), not
                    # keepalive_timeout, for the answer: both, so that either closes it
                    ("grpc.keepalive_timeout_ms", timeout_ms), ("grpc.http2.ping_timeout_ms", timeout_ms),
                    # core's default stops pinging after two pings with no data between them,
                    # which an idle stream never sends
                    ("grpc.http2.max_pings_without_data", 0)]
    return options


class GrpcServer:
    def __init__(self, service: InferenceService, settings: Settings,
                 closed: Callable[[str], None] = lambda reason: None) -> None:
        """`closed(reason)`: each call the guard closes or refuses (app/grpc/calls.py), for the metrics."""
        self.service = service
        self.settings = settings
        self._server: grpc.aio.Server | None = None
        self.port = settings.grpc_port
        self._health = _Health(service.ready)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Task[None] | None = None
        self.calls = CallBook(settings.max_grpc_calls, settings.body_timeout_s, settings.send_timeout_s, closed)

    async def start(self) -> None:
        s = self.settings
        _, grpc_connections = connection_limits(s.max_connections, s.max_grpc_connections, grpc=True)
        options = [
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.max_send_message_length", s.response_limit_bytes + SEND_SLACK_BYTES),
            ("grpc.max_connection_idle_ms", IDLE_CONNECTION_S * 1000),
            *keepalive_options(s.grpc_keepalive_s, s.grpc_client_ping_s),
            # Connections have their own bound (app/descriptors.py: they must not use up the
            # descriptors HTTP needs), and an HTTP/2 handshake the time HTTP gives a head.
            ("grpc.max_allowed_incoming_connections", grpc_connections),
            # HTTP/2's stream limit (core's default: none): also what bounds the answers a client
            # that takes none leaves with core on one connection (app/grpc/calls.py).
            ("grpc.max_concurrent_streams", s.max_grpc_calls_per_connection),
            ("grpc.server_handshake_timeout_ms", int(s.header_timeout_s * 1000)),
            # gRPC shares a port between processes unless told not to: with one worker a
            # second server must fail on a taken port, not serve half its calls; with
            # several, each worker binds the port and the kernel spreads the connections.
            ("grpc.so_reuseport", 1 if s.worker_processes > 1 else 0),
        ]
        # max_grpc_calls is the guard's to count (app/grpc/calls.py), not grpc.aio's: grpc.aio's
        # counted idle streams and calls with no message alike, until no call could start.
        guard = CallGuard(self.calls, explained=frozenset({f"/{SERVICE}/ModelStreamInfer"}))
        server = grpc.aio.server(options=options, interceptors=[guard])
        server.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        where = address(s.host, s.grpc_port)
        tls = tls_files(s)
        try:
            if tls is None:
                self.port = server.add_insecure_port(where)  # grpc_port 0: the one the system chose
            else:  # the HTTPS port's certificate, renewed as it is; with a client CA, mutual TLS as on HTTPS
                renewed = _RenewedCertificate(s)
                credentials = grpc.dynamic_ssl_server_credentials(_configuration(tls), renewed.fetch,
                                                                  require_client_authentication=tls.client_ca is not None)
                self.port = server.add_secure_port(where, credentials)
        except RuntimeError as e:
            raise OSError(f"cannot listen for gRPC on {where} ({e}); choose another port with --grpc-port "
                          "or ORTSERVE_GRPC_PORT, or turn gRPC off with --no-grpc") from None
        await server.start()
        self._server = server
        await self._sync_health()
        self._tasks.append(asyncio.create_task(self._watch_health(), name="grpc-health"))
        self._tasks.append(asyncio.create_task(self._close_late_calls(), name="grpc-late-calls"))
        logger.info("gRPC (KServe V2, health, reflection) on %s%s", address(s.host, self.port),
                    "" if tls is None else " over TLS" + (", clients' certificates required" if tls.client_ca else ""))

    async def _sync_health(self) -> None:
        status = self._health.status()
        for service in ("", SERVICE):
            await self._health.set(service, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            await self._sync_health()

    async def _close_late_calls(self) -> None:
        while True:
            await asyncio.sleep(self.calls.sweep_every_s())
            self.calls.close_late()

    def begin_stop(self) -> None:
        """Stop taking calls now; those accepted have shutdown_grace_s to finish (then they
        are cancelled). Called as HTTP's listener closes; `stop` waits for it."""
        if self._server is None or self._stopping is not None:
            return
        for task in self._tasks:
            task.cancel()
        self._stopping = asyncio.create_task(self._stop(self._server), name="grpc-stop")

    async def _stop(self, server: grpc.aio.Server) -> None:
        await self._health.enter_graceful_shutdown()
        await server.stop(self.settings.shutdown_grace_s)
        logger.info("gRPC stopped")

    async def stop(self) -> None:
        self.begin_stop()
        if self._stopping is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopping
