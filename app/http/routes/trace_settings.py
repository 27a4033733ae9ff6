"""Triton's trace extension over HTTP: GET /v2/trace/setting reads the traces' settings, POST
changes those its body names (app/observability/trace_settings.py), in every worker. Changing
them takes the admin token, as the log's settings do. A model's settings are the server's:
reading them answers the server's, and changing them for one model is refused."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.access import check_admin_token
from app.http.responses import JSONResponse, header
from app.http.routes.common import ModelName, errors
from app.http.services import Services, services
from app.observability.trace_settings import SharedTraceSettings
from app.protocol.v2 import ErrorResponse
from app.protocol.values import json_object

router = APIRouter(tags=["tracing"])
_EXAMPLE = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
            "trace_file": "", "trace_mode": "opentelemetry"}
_READ: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"example": _EXAMPLE}}}}
_CHANGE: dict[int | str, dict[str, Any]] = errors(400, 408, 413, 422) | {
    401: {"model": ErrorResponse, "description": "No admin token, or a wrong one."},
    403: {"model": ErrorResponse, "description": "No admin token is configured."}}


def _body(examples: dict[str, Any]) -> dict[str, Any]:
    return {"security": [{"HTTPBearer": []}], "requestBody": {"content": {"application/json": {
        "schema": {"type": "object"}, "examples": {name: {"value": value} for name, value in examples.items()}}}}}


def _settings(found: Services) -> SharedTraceSettings:
    assert found.trace_settings is not None  # set by the lifespan before any request
    return found.trace_settings


@router.get("/v2/trace/setting", summary="The traces' settings (Triton's trace extension)",
            description="trace_level TIMESTAMPS (tracing on) or OFF, trace_rate (one request in so many "
                        "traced), and what does not change here (trace_count, log_frequency, trace_file, "
                        "trace_mode).", responses=_READ)
async def get_trace_settings(request: Request) -> Response:
    return JSONResponse(_settings(services(request)).current.as_triton())


@router.post("/v2/trace/setting", summary="Change the traces' settings, in every worker",
             description="The settings the body names change (Triton's names; each value a string or a list of "
                         "strings, null for the server's start value), the others stay; the answer is every "
                         "setting.", responses=_CHANGE,
             openapi_extra=_body({"one request in ten": {"trace_level": ["TIMESTAMPS"], "trace_rate": "10"}}))
async def change_trace_settings(request: Request) -> Response:
    return await _change(request, None)


@router.get("/v2/models/{name}/trace/setting", summary="A model's trace settings: the server's",
            description="Trace settings are the server's for every model (404 for a model not known).",
            responses=_READ)
async def get_model_trace_settings(request: Request, name: ModelName) -> Response:
    found = services(request)
    found.repository.get(name)  # 404 / 503 as any model call
    return JSONResponse(_settings(found).current.as_triton())


@router.post("/v2/models/{name}/trace/setting", summary="A model's trace settings: refused unless cleared",
             description="Trace settings are not kept per model: a body that clears them (every value null) "
                         "answers the server's; one that sets any is a 400.", responses=_CHANGE,
             openapi_extra=_body({"fashion-cnn": {"trace_rate": None}}))  # keyed by the model it is for
async def change_model_trace_settings(request: Request, name: ModelName) -> Response:
    return await _change(request, name)


async def _change(request: Request, model: str | None) -> Response:
    found = services(request)
    check_admin_token(header(request, b"authorization"), found.admin_token, "changing the trace settings")
    if model is not None:
        found.repository.get(model)  # 404 / 503 as any model call
    asked = json_object(await found.budget.read_body(request), "of trace settings (Triton's names)")
    return JSONResponse(_settings(found).change_for(asked, model is not None).as_triton())

