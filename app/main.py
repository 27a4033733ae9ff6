"""Composition root: builds the FastAPI app, its lifespan (load, warm up, drain) and error handling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.errors import ServingError
from app.fastpath import FastPath
from app.log import configure_logging
from app.metrics import Metrics
from app.middleware import RequestContext
from app.repository import ModelRepository
from app.routes import health, v1, v2
from app.routes.body import JSONResponse, error_response, internal_error_response
from app.runtime import RuntimeOptions, available_cpus, choose_providers
from app.settings import Settings
from app.tuning import settle_heap

logger = logging.getLogger(__name__)


def runtime_options(settings: Settings) -> RuntimeOptions:
    providers = choose_providers(settings.providers)
    # The event loop parses every request and feeds every batch: it keeps a core, and the
    # inference threads share the rest, so that ORT does not oversubscribe the loop's core.
    threads = settings.intra_op_threads or max(1, (available_cpus() - 1) // settings.inference_threads)
    return RuntimeOptions(providers=providers, intra_op_threads=threads)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing is read or loaded until its lifespan starts."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or Settings()
        if settings is None:  # started as `uvicorn app.main:app`: nobody configured logging
            configure_logging(resolved.log_format, resolved.log_level)
        app.state.settings = resolved
        app.state.draining = False
        options = runtime_options(resolved)
        logger.info("onnxruntime providers %s, %d intra-op threads per batch, %d CPUs usable",
                    options.providers, options.intra_op_threads, available_cpus())
        repository = ModelRepository(resolved, options, metrics)
        await repository.load_all()
        app.state.repository = repository
        settle_heap()
        logger.info("ready: serving %s", ", ".join(f"{m.name} v{m.version}" for m in repository.all()))
        try:
            yield
        finally:
            app.state.draining = True
            await repository.stop()
            logger.info("stopped")

    app = _OrtServe(
        title="ortserve", version=__version__, lifespan=lifespan,
        description="ONNX Runtime models behind dynamic batching: the KServe V2 / Open Inference "
                    "Protocol (with Triton's binary tensors, model configuration and statistics) "
                    "and task-level V1 endpoints that take raw images and text.",
    )
    app.state.metrics = metrics
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(health.router)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(app)
    _install_openapi_models(app)
    return app


class _OrtServe(FastAPI):
    """FastAPI with the inference routes dispatched in front of it (app/fastpath.py), and
    request ids and metrics around both.

    In front of FastAPI itself, not only of its middleware: FastAPI's own `__call__` looks
    up the OpenTelemetry providers on every request (environment reads, about 5 µs here),
    which the inference routes skip; they are covered by the service's own metrics and
    request ids instead. Every other route, and the lifespan, goes through FastAPI.
    """

    _front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._front is None:
            framework = partial(FastAPI.__call__, self)
            self._front = RequestContext(FastPath(framework, [*v1.HOT_ROUTES, *v2.HOT_ROUTES], self),
                                         self.state.metrics)
        await self._front(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return internal_error_response(request.method, request.url.path)


def _install_openapi_models(app: FastAPI) -> None:
    """Routes read raw bodies (for speed and for binary tensors), so their request schemas are
    added to the OpenAPI components by hand."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in v2.OPENAPI_MODELS:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(generated.pop("$defs", {}))
            components[model.__name__] = generated
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
