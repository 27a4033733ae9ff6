"""Triton's model repository extension: the index of every model version, and load / unload.

Off unless an admin token is configured; load and unload only in the explicit model
control mode (app/http/routes/common.py `authorize_admin`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from app.errors import InvalidInput, NotFound
from app.http.responses import JSONResponse
from app.http.routes.common import ModelName, authorize_admin, errors
from app.http.services import services
from app.protocol.v2 import ErrorResponse
from app.protocol.values import json_object
from app.repository import load_config, repository_named, unload_dependents
from app.repository.uploads import uploaded_files

router = APIRouter(tags=["model repository"])
ADMIN_ERRORS = errors(400, 408, 422) | {
    401: {"model": ErrorResponse, "description": "No admin token, or a wrong one."},
    403: {"model": ErrorResponse, "description": "The repository API is off (no admin token configured), or "
                                                 "the model control mode does not allow load and unload."},
}
CHANGE_ERRORS = ADMIN_ERRORS | errors(404) | {
    400: {"model": ErrorResponse, "description": "The body is not JSON, or the model (or a version) failed to "
                                                 "load: the message gives the reason; what served before serves on."}}
_BEARER: list[dict[str, list[str]]] = [{"HTTPBearer": []}]


async def _options(request: Request) -> dict[str, Any]:
    """The JSON body Triton's clients send (optional): its `parameters`, or the index's `ready`."""
    body = await services(request).budget.read_body(request)
    return json_object(body, "(or empty)") if body.strip() else {}


@router.post("/v2/repository/index", summary="Every model version found, with its state and why",
             description="Each model version on disk or served: READY, UNAVAILABLE, LOADING or UNLOADING, "
                         "and the reason for any state but READY. `{\"ready\": true}` lists only READY ones.",
             responses=ADMIN_ERRORS, openapi_extra={"security": _BEARER})
async def repository_index(request: Request) -> Response:
    authorize_admin(request, changes=False)
    options = await _options(request)
    entries = await services(request).repository.index()
    if options.get("ready"):
        entries = [e for e in entries if e["state"] == "READY"]
    return JSONResponse(entries)


@router.post("/v2/repository/models/{name}/load", summary="Load, or reload, a model",
             description="Reads the model's folder again and serves the versions its version policy selects: "
                         "new versions load and warm up beside the serving ones, traffic switches at once, "
                         "and versions no longer selected finish their requests, then unload. A version "
                         "that fails leaves the previous one serving (400, with the reason). "
                         "`{\"parameters\": {\"config\": \"<Triton model configuration as JSON>\"}}` applies "
                         "that configuration on top of the folder's for this load (max_batch_size, "
                         "dynamic_batching, version_policy, input, output, default_model_filename); any other "
                         "field is a 400 that names it. With it, `\"file:1/model.onnx\": \"<base64>\"` parameters "
                         "(Triton's file overrides, as tritonclient's load_model(files=...) sends them) are the "
                         "model's files for this load, served instead of its folder's until a load without files.",
             responses=CHANGE_ERRORS, openapi_extra={"security": _BEARER})
async def load_model(request: Request, name: ModelName) -> Response:
    changes = services(request).changes
    return await _change(request, lambda options: changes.load(name, _config(options),
                                                               uploaded_files(_parameters(options))))


def _config(options: dict[str, Any]) -> object:
    """The load's `parameters.config` (checked by the repository's `load_override`)."""
    return load_config(_parameters(options))


def _parameters(options: dict[str, Any]) -> dict[str, Any]:
    parameters = options.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters must be an object")
    return parameters


@router.post("/v2/repository/models/{name}/unload", summary="Stop serving a model",
             description="Every version stops taking requests, finishes those it has, then unloads. "
                         "`{\"parameters\": {\"unload_dependents\": true}}`: an ensemble's step models too "
                         "(but those another served ensemble runs).",
             responses=CHANGE_ERRORS, openapi_extra={"security": _BEARER})
async def unload_model(request: Request, name: ModelName) -> Response:
    changes = services(request).changes
    return await _change(request, lambda options: changes.unload(name, unload_dependents(_parameters(options))))


async def _change(request: Request, change: Callable[[dict[str, Any]], Awaitable[object]]) -> Response:
    """Load or unload: the admin check, the (optional) body read, then the change, given the body."""
    authorize_admin(request, changes=True)
    await change(await _options(request))
    return Response(status_code=200)


@router.post("/v2/repository/{repository_name}/index", include_in_schema=False)
@router.post("/v2/repository/{repository_name}/models/{name}/{action}", include_in_schema=False)
async def named_repository(request: Request, repository_name: str, action: str = "index") -> Response:
    """Triton's routes that name a repository: refused as Triton refuses them (and as the gRPC
    calls' repository_name is), after the same access check as the calls without one."""
    if action not in ("index", "load", "unload"):
        raise NotFound(f"no route {request.url.path!r}")
    authorize_admin(request, changes=action != "index")
    raise repository_named(repository_name)
