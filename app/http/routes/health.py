"""Liveness, readiness and server metadata (V2 protocol)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import __version__
from app.http.services import services
from app.protocol.triton import SERVER_NAME, extensions
from app.protocol.v2 import MetadataServerResponse

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="Liveness: the process answers", response_class=Response,
            description="200 with an empty body while the process runs its event loop, whatever its models "
                        "do; answered ahead of any queued work.",
            responses={200: {"description": "alive"}})
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Readiness: every model that should be served is serving",
            response_class=Response,
            description="200 with an empty body once every model the control mode and version policy select "
                        "is serving, in every worker process; 503 while loading, while one of them is not served, and while draining "
                        "on SIGTERM. /v2/models/{name}/ready tells which model is not.",
            responses={200: {"description": "ready"},
                       503: {"description": "still loading, a model that should be served is not, or shutting down"}})
async def ready(request: Request) -> Response:
    return Response(status_code=200 if services(request).ready() else 503)


@router.get("/v2", response_model=MetadataServerResponse, summary="Server metadata",
            description="The server's name, version and the protocol extensions it supports (Triton's names).")
async def server_metadata(request: Request) -> MetadataServerResponse:
    found = request.app.services  # None while starting: nothing optional served yet
    return MetadataServerResponse(name=SERVER_NAME, version=__version__,
                                  extensions=extensions(found is not None and found.shared_memory is not None))
