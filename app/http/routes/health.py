"""Liveness, readiness and server metadata (V2 protocol)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import __version__
from app.protocol.v2 import ErrorResponse, MetadataServerResponse

router = APIRouter(tags=["health"])
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Readiness: every model that should be served is serving",
            responses={503: {"description": "still loading, a model that should be served is not, or shutting down"}})
async def ready(request: Request) -> Response:
    repository = getattr(request.app.state, "repository", None)
    ok = repository is not None and repository.ready and not request.app.state.draining
    return Response(status_code=200 if ok else 503)


@router.get("/v2", response_model=MetadataServerResponse, summary="Server metadata",
            responses={500: {"model": ErrorResponse}})
async def server_metadata() -> MetadataServerResponse:
    return MetadataServerResponse(name="ortserve", version=__version__, extensions=EXTENSIONS)
