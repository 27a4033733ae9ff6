"""Composition root: builds the FastAPI app and its lifespan (load, warm up, drain)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.errors import StrictModelsRefused
from app.grpc.server import GrpcServer
from app.grpc.service import InferenceService
from app.http.budget import RequestBudget
from app.http.connections import LIMITS_STATE, HttpLimits
from app.http.cross_origin import cross_origin
from app.http.docs_pages import add_docs_pages
from app.http.errors import install_error_handlers
from app.http.fastpath import FastPath
from app.http.hot_routes import fast_dispatch_possible
from app.http.metrics_port import MetricsPort
from app.http.middleware import RequestContext
from app.http.openapi import add_body_schemas
from app.http.routes import console, health, metrics, model_repository, v1, v2
from app.http.routes import log_settings as log_settings_routes
from app.http.routes import shared_memory as shared_memory_routes
from app.http.routes import trace_settings as trace_settings_routes
from app.http.services import Services
from app.keep_awake import CHECK_S as KEEP_AWAKE_CHECK_S
from app.keep_awake import KeepAwake, window_from_setting
from app.listeners import accepting
from app.observability.access import AccessLog
from app.observability.log import configure_logging
from app.observability.log_settings import LogSettings, SharedLogSettings
from app.observability.metrics import Metrics, RequestSeries
from app.observability.trace_settings import SharedTraceSettings, TraceSettings
from app.observability.tracing import Tracing, otlp_endpoint
from app.observability.worker_stats import STATS_SNAPSHOT_S, WorkerStats
from app.observability.worker_traces import SHOWN, TRACES_SNAPSHOT_S, WorkerTraces
from app.observability.workers import SNAPSHOT_S, WorkerMetrics
from app.offload import HEAVY_BODY_BYTES, Offload
from app.processes import PEERS
from app.protocol.shared_memory import SharedMemoryRegions
from app.repository import ModelRepository
from app.repository.shared import FOLLOW_S, RepositoryChanges, SharedRepository
from app.runtime import available_cpus, ort_options
from app.sequence_peers import SequencePeers
from app.served_model import ServedModel
from app.settings import Settings
from app.shutdown import delay_sigterm
from app.tuning import one_heap, settle_heap

logger = logging.getLogger(__name__)

HOT_ROUTES = [*v1.HOT_ROUTES, *v2.HOT_ROUTES]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing is read or loaded until its lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: _OrtServe) -> AsyncIterator[Mapping[str, object]]:
        resolved = settings or Settings()
        if settings is None:  # started as `uvicorn app.main:app`: nobody configured logging
            configure_logging(resolved.log_format, resolved.log_level, https=resolved.tls_cert_file is not None)
        if resolved.trim_memory:
            one_heap()  # where `python -m app` did not already (`uvicorn app.main:app`): before the models' threads
        admin = resolved.admin_secret()
        api_keys = [key.encode() for key in resolved.api_secrets()]
        options = ort_options(resolved.provider_preference, resolved.intra_op_threads, resolved.inference_threads,
                              resolved.worker_processes, resolved.custom_op_libraries)
        logger.info("onnxruntime providers %s, %d intra-op threads per batch (%s for large batches), %d CPUs usable",
                    options.providers, options.intra_op_threads, options.wide_threads or "the same",
                    available_cpus())
        peers = None  # with several workers, a sequence's steps reach its worker through any (app/sequence_peers.py)
        if resolved.control_dir is not None and resolved.worker_processes > 1:
            elsewhere = app.metrics.sequence_steps_elsewhere
            peers = SequencePeers(resolved.control_dir / PEERS, 2 * (resolved.max_body_bytes + resolved.response_limit_bytes),
                                  ran_elsewhere=lambda model: elsewhere.labels(model).inc())
        repository = ModelRepository(resolved, options, app.metrics, peers)
        if peers is not None:
            await peers.start(partial(_served, repository))
        app.metrics.watch_pending(lambda: [(m.name, m.version, m.batcher.queued_requests if m.batcher else 0)
                                           for m in repository.all()])  # an ensemble (no batcher) queues nothing
        app.metrics.watch_sequences(lambda: [(m.name, m.version, m.sequences.active) for m in repository.all()
                                             if m.sequences is not None])
        failures = await repository.start()
        if failures and resolved.strict_models:
            await repository.stop()
            if peers is not None:
                await peers.stop()
            raise StrictModelsRefused(failures)
        changes = RepositoryChanges(repository) if resolved.control_dir is None else SharedRepository(
            repository, resolved.control_dir, resolved.worker_processes, accepting=accepting)
        await changes.start()  # what the repository API changed in the other workers, before answering
        settle_heap()
        logger.info("ready: serving %s", ", ".join(f"{m.name} v{m.version}" for m in repository.all()) or "nothing")
        for failure in failures:
            logger.error("not served: %s", failure)
        worker_metrics = None if resolved.metrics_dir is None else WorkerMetrics(
            app.metrics.registry, resolved.metrics_dir, failures=app.metrics.metrics_snapshot_failures)
        worker_stats = None if resolved.metrics_dir is None else WorkerStats(resolved.metrics_dir)
        worker_traces = None if resolved.metrics_dir is None else WorkerTraces(resolved.metrics_dir)
        offload = Offload(resolved.decode_threads)
        log_settings = SharedLogSettings(LogSettings.at_level(resolved.log_level, resolved.log_format),
                                         resolved.control_dir)
        services = app.services = Services(
            settings=resolved, repository=repository, changes=changes, log_settings=log_settings, metrics=app.metrics,
            budget=RequestBudget(resolved, offload), offload=offload, api_keys=api_keys,
            admin_token=admin.encode() if admin else None, worker_metrics=worker_metrics,
            shared_memory=SharedMemoryRegions(resolved.max_body_bytes, resolved.control_dir, resolved.shared_memory_dir,
                                              HEAVY_BODY_BYTES) if resolved.shared_memory else None,
            worker_stats=worker_stats, worker_traces=worker_traces)
        endpoint = otlp_endpoint(resolved.otlp_endpoint)
        # Triton's trace extension turns tracing on and off and changes its rate while serving
        # (app/observability/trace_settings.py): applied here, in every worker.
        services.trace_settings = SharedTraceSettings(
            TraceSettings.started(resolved.tracing or endpoint is not None, resolved.trace_sample),
            partial(_trace_as, app, endpoint), resolved.control_dir)
        if resolved.access_log:
            app.access_log = AccessLog(resolved.log_format, resolved.access_log_sample,
                                       dropped=app.metrics.access_log_dropped.inc)
            app.access_log.start()
        grpc_server = None
        if resolved.grpc:
            closed = app.metrics.grpc_calls_closed
            grpc_server = GrpcServer(InferenceService(services, app.request_series, app), resolved,
                                     lambda reason: closed.labels(reason).inc())
            app.grpc_server = grpc_server
            try:
                await grpc_server.start()
            except OSError:
                changes.stop()
                await repository.stop()
                if peers is not None:
                    await peers.stop()
                if app.access_log is not None:
                    app.access_log.stop()
                _stop_tracing(app)
                raise
        awake_s = window_from_setting(resolved.keep_awake_ms)
        if awake_s:
            try:
                app.keep_awake = KeepAwake.started(awake_s)
            except OSError as e:  # it only shortens wake-ups: serve without it
                logger.warning("serving without the keep-awake helper: %s", e)
        background = start_background_tasks(repository, resolved, worker_metrics, changes, services, app,
                                            app.keep_awake)
        # gRPC stops taking calls as HTTP's listener closes (after the drain delay).
        delay_sigterm(services.start_draining, resolved.drain_delay_s,
                      closing=grpc_server.begin_stop if grpc_server is not None else None)
        try:
            # uvicorn hands this state to every connection it makes: how the HTTP limits reach them
            yield {LIMITS_STATE: HttpLimits.from_settings(resolved)}
        finally:
            services.start_draining()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if grpc_server is not None:  # its accepted calls finish before the models go
                await grpc_server.stop()
            changes.stop()
            services.share_statistics(last=True)  # before the models go, with them their figures
            await repository.stop()
            if peers is not None:  # the others' steps of its sequences, answered until its models went
                await peers.stop()
            if worker_metrics is not None:
                worker_metrics.retire_snapshot()
            services.offload.shutdown()
            if app.access_log is not None:  # every line of the drained requests written
                app.access_log.stop()
                app.access_log = None
            _stop_tracing(app)  # the drained requests' spans sent
            app.metrics.unwatch_pending()
            app.metrics.unwatch_sequences()
            if app.keep_awake is not None:
                app.keep_awake.stop()
                app.keep_awake = None
            logger.info("stopped")

    app = _OrtServe(
        title="ortserve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="ONNX Runtime models behind dynamic batching: the KServe V2 / Open Inference "
                    "Protocol (with Triton's binary tensors, model configuration and statistics) "
                    "and task-level V1 endpoints that take raw images and text.",
    )
    # trace settings before the repository's: the OpenAPI document's examples are tried in its order,
    # and a model's trace settings want the model served (tests/app/http/test_openapi.py)
    for module in (v1, v2, health, trace_settings_routes, model_repository, log_settings_routes, shared_memory_routes,
                   metrics, console):
        app.include_router(module.router)
    install_error_handlers(app)
    add_body_schemas(app, app.repository)
    add_docs_pages(app)
    return app


def start_background_tasks(repository: ModelRepository, settings: Settings,
                           worker_metrics: WorkerMetrics | None = None,
                           changes: RepositoryChanges | None = None,
                           services: Services | None = None, observers: _Traced | None = None,
                           keep_awake: KeepAwake | None = None) -> list[asyncio.Task[None]]:
    """The watchdog of stalled batches, in poll mode the repository scanner, with several
    workers this one's metrics, statistics and (while tracing is on) slowest traces for the
    others, and its following of the others' changes, and the keep-awake helper's watch."""
    tasks = [asyncio.create_task(_every(min(1.0, settings.inference_timeout_s / 4), repository.watch_health),
                                 name="watchdog")]
    if settings.model_control_mode == "poll":
        tasks.append(asyncio.create_task(_every(settings.repository_poll_s, repository.poll), name="poller"))
    if worker_metrics is not None:
        tasks.append(asyncio.create_task(_every(SNAPSHOT_S, worker_metrics.write_snapshot), name="metrics"))
    if services is not None and services.worker_stats is not None:
        tasks.append(asyncio.create_task(_every(STATS_SNAPSHOT_S, services.share_statistics), name="statistics"))
    if services is not None and services.worker_traces is not None and observers is not None:
        tasks.append(asyncio.create_task(_every(TRACES_SNAPSHOT_S, partial(
            _publish_traces, observers, services.worker_traces)), name="traces"))
    if isinstance(changes, SharedRepository):
        tasks.append(asyncio.create_task(_every(FOLLOW_S, changes.follow), name="repository-changes"))
    if services is not None and settings.control_dir is not None:
        tasks.append(asyncio.create_task(_every(FOLLOW_S, services.log_settings.follow), name="log-settings"))
        if services.trace_settings is not None:
            tasks.append(asyncio.create_task(_every(FOLLOW_S, services.trace_settings.follow), name="trace-settings"))
    if keep_awake is not None:
        tasks.append(asyncio.create_task(_every(KEEP_AWAKE_CHECK_S, keep_awake.replace_if_gone), name="keep-awake"))
    return tasks


class _Traced(Protocol):
    tracing: Tracing | None


def _publish_traces(observers: _Traced, workers: WorkerTraces) -> None:
    """This worker's slowest recent traces, for the console of whichever worker answers."""
    if observers.tracing is not None:
        workers.write([vars(record) for record in observers.tracing.recent.slowest(SHOWN)])


def _served(repository: ModelRepository, name: str, version: str) -> ServedModel | None:
    """The version another worker names, where this one serves it."""
    return repository.routes.find(name, int(version)) if version.isdigit() else None


def _stop_tracing(app: _OrtServe) -> None:
    for tracer in (app.tracing, app.tracing_off):
        if tracer is not None:
            tracer.shutdown()
    app.tracing = app.tracing_off = None


def _trace_as(app: _OrtServe, endpoint: str | None, settings: TraceSettings) -> None:
    """Tracing as the settings say: on (the tracer made the first time, kept while off, so its
    recent traces and OTLP exporter stay) at their fraction of requests, or off."""
    if settings.on:
        if app.tracing is None:
            app.tracing = app.tracing_off or Tracing(settings.sample, endpoint)
            app.tracing_off = None
        app.tracing.ratio = settings.sample
    elif app.tracing is not None:
        app.tracing_off, app.tracing = app.tracing, None


async def _every(seconds: float, step: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except Exception:  # a failed scan is logged and retried; it must not end the loop
            logger.exception("background task %s failed", getattr(step, "__name__", step))


class _OrtServe(FastAPI):
    """FastAPI with the hot routes dispatched in front of it (app/http/fastpath.py), and
    request ids and metrics around both; outermost, where cors_origins names any, the
    answers to pages of other origins (app/http/cross_origin.py).

    In front of FastAPI itself, not only of its middleware: FastAPI's own `__call__` looks
    up the OpenTelemetry providers on every request, which the hot routes skip; they are
    covered by the service's own metrics and request ids instead. Every other route, and
    the lifespan, goes through FastAPI. Built on the first request, once the lifespan has
    set the app up.
    """

    _front: ASGIApp | None = None
    services: Services | None = None
    """What the routes need (app/http/services.py): built by the lifespan."""
    access_log: AccessLog | None = None
    """One line per request (app/observability/access.py), where the settings turn it on."""
    tracing: Tracing | None = None
    """Request traces (app/observability/tracing.py), where the settings turn them on."""
    tracing_off: Tracing | None = None
    """The tracer while the trace extension has tracing off (kept to be turned on again)."""
    keep_awake: KeepAwake | None = None
    """Keeps a CPU awake between requests (app/keep_awake.py), where the settings leave it on."""
    grpc_server: GrpcServer | None = None
    """The gRPC service's server (app/grpc/server.py), where the settings turn it on."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.metrics = Metrics()  # before the lifespan: the middleware counts every request
        self.request_series = RequestSeries(self.metrics, self._serves)  # HTTP's requests and gRPC's calls

    def repository(self) -> ModelRepository | None:
        return self.services.repository if self.services is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._front is None:
            if scope["type"] == "lifespan":  # the front is built for requests, from what the lifespan set up
                await FastAPI.__call__(self, scope, receive, send)
                return
            self._front = self._build_front()
        await self._front(scope, receive, send)

    def _build_front(self) -> ASGIApp:
        inner: ASGIApp = partial(FastAPI.__call__, self)
        why_not = fast_dispatch_possible(self)
        if why_not is None:
            inner = FastPath(inner, HOT_ROUTES, self)
        else:
            logger.info("hot routes go through FastAPI: %s", why_not)
        settings = self.services.settings if self.services is not None else None
        if settings is not None and settings.metrics_port is not None:
            inner = MetricsPort(inner, settings.metrics_port, settings.port)
        front: ASGIApp = RequestContext(inner, self.request_series, self)
        origins = settings.cors_origins if settings is not None else []
        return cross_origin(front, origins) if origins else front

    def _serves(self, model: str) -> bool:
        repository = self.repository()
        return repository is not None and repository.serves(model)


app = create_app()
