"""Triton's logging extension over HTTP: GET /v2/logging reads the log's settings, POST
changes those its body names (app/observability/log_settings.py), in every worker. Changing
them takes the admin token, as the repository API does; reading them does not (they say
nothing a client could use)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.access import check_admin_token
from app.http.responses import JSONResponse, header
from app.http.routes.common import errors
from app.http.services import services
from app.protocol.v2 import ErrorResponse
from app.protocol.values import json_object

router = APIRouter(tags=["logging"])
_EXAMPLE = {"log_file": "", "log_info": True, "log_warnings": True, "log_errors": True, "log_verbose_level": 0,
            "log_format": "text"}


@router.get("/v2/logging", summary="The log's settings (Triton's logging extension)",
            description="Which severities are written (log_info, log_warnings, log_errors; log_verbose_level "
                        "above 0: debug lines too), and where and how (log_file: stderr; log_format: text or "
                        "json, chosen at start).",
            responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}})
async def get_log_settings(request: Request) -> Response:
    return JSONResponse(services(request).log_settings.current.as_triton())


@router.post("/v2/logging", summary="Change the log's settings, in every worker",
             description="The settings the body names change (Triton's names and types), the others stay; the "
                         "answer is every setting. log_file and log_format cannot change while the server runs.",
             responses=errors(400, 408, 413, 422) | {
                 401: {"model": ErrorResponse, "description": "No admin token, or a wrong one."},
                 403: {"model": ErrorResponse, "description": "No admin token is configured."}},
             openapi_extra={"security": [{"HTTPBearer": []}], "requestBody": {"content": {"application/json": {
                 "schema": {"type": "object"}, "examples": {"debug lines on": {"value": {"log_verbose_level": 1}}}}}}})
async def change_log_settings(request: Request) -> Response:
    found = services(request)
    check_admin_token(header(request, b"authorization"), found.admin_token, "changing the log settings")
    asked = json_object(await found.budget.read_body(request), "of log settings (Triton's names)")
    return JSONResponse(found.log_settings.change(asked).as_triton())
