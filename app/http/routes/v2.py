"""KServe V2 model endpoints, with Triton's binary tensors, model configuration and statistics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import model_views
from app.http.budget import client_gone
from app.http.encodings import PACK_ANSWERS_FROM
from app.http.examples import V2_EXAMPLES
from app.http.hot_routes import HotRoute, add_hot_routes
from app.http.responses import JSONBytes, JSONResponse, header
from app.http.routes.common import MODEL_ERRORS, ModelName, Version, authorize, large_answer
from app.http.services import services
from app.inference import run_inference
from app.protocol.binary import HEADER_LENGTH
from app.protocol.v2 import InferenceRequest, InferenceResponse, MetadataModelResponse, V2Exchange

router = APIRouter(tags=["v2"])


# Registered before /v2/models/{name}, which would otherwise take "stats" for a model name.
@router.get("/v2/models/stats", summary="Triton statistics of every model",
            description="Triton's statistics extension: per served model version, request and batch counts "
                        "and the time spent queued, preparing inputs, computing and answering.")
async def all_stats(request: Request) -> Response:
    return JSONResponse({"model_stats": services(request).statistics()})


_METADATA_DESCRIPTION = ("The V2 model metadata: its inputs and outputs (names, datatypes, shapes with -1 for "
                         "the batch axis), platform, and as parameters the ONNX variant served, the execution "
                         "providers, the task and the labels.")


@router.get("/v2/models/{name}", response_model=MetadataModelResponse, responses=MODEL_ERRORS,
            summary="Model metadata: inputs, outputs, platform, variant and provider",
            description=_METADATA_DESCRIPTION + " `versions` lists every served version.")
async def model_metadata(request: Request, name: ModelName) -> Response:
    return JSONResponse(model_views.metadata(services(request).repository, name))


@router.get("/v2/models/{name}/versions/{version}", response_model=MetadataModelResponse, responses=MODEL_ERRORS,
            summary="Metadata of one model version", description=_METADATA_DESCRIPTION)
async def version_metadata(request: Request, name: ModelName, version: Version) -> Response:
    return JSONResponse(model_views.metadata(services(request).repository, name, version))


_READY_DESCRIPTION = "200 with an empty body when it serves requests; 404 or 503 (with the reason) when not."


@router.get("/v2/models/{name}/ready", responses=MODEL_ERRORS, summary="Model readiness",
            description=_READY_DESCRIPTION)
async def model_ready(request: Request, name: ModelName) -> Response:
    services(request).repository.get(name)  # raises 404 / 503
    return Response(status_code=200)


@router.get("/v2/models/{name}/versions/{version}/ready", responses=MODEL_ERRORS, summary="Model version readiness",
            description=_READY_DESCRIPTION)
async def version_ready(request: Request, name: ModelName, version: Version) -> Response:
    services(request).repository.get(name, version)
    return Response(status_code=200)


_CONFIG_DESCRIPTION = ("Triton's model configuration, as its tools (perf_analyzer, model analyzer) read it: "
                       "max_batch_size, dynamic batching delay, inputs and outputs without the batch axis, "
                       "instance group, and the version policy applied.")


@router.get("/v2/models/{name}/config", responses=MODEL_ERRORS, summary="Triton model configuration",
            description=_CONFIG_DESCRIPTION)
async def model_config(request: Request, name: ModelName) -> Response:
    return JSONResponse(model_views.config(services(request).repository, name))


@router.get("/v2/models/{name}/versions/{version}/config", responses=MODEL_ERRORS,
            summary="Triton model configuration of one version", description=_CONFIG_DESCRIPTION)
async def version_config(request: Request, name: ModelName, version: Version) -> Response:
    return JSONResponse(model_views.config(services(request).repository, name, version))


@router.get("/v2/models/{name}/stats", responses=MODEL_ERRORS, summary="Triton statistics of one model",
            description="Triton's statistics of every served version of the model (see /v2/models/stats).")
async def model_stats(request: Request, name: ModelName) -> Response:
    return JSONResponse({"model_stats": services(request).statistics(name)})


@router.get("/v2/models/{name}/versions/{version}/stats", responses=MODEL_ERRORS,
            summary="Triton statistics of one model version",
            description="Triton's statistics of one served version (see /v2/models/stats).")
async def version_stats(request: Request, name: ModelName, version: Version) -> Response:
    return JSONResponse({"model_stats": services(request).statistics(name, version)})


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"},
                                 "examples": V2_EXAMPLES},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary",
                           "description": "Triton binary tensor extension: a JSON InferenceRequest of "
                                          "Inference-Header-Content-Length bytes, then the raw tensors"},
            },
        },
    },
    "responses": {"200": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/InferenceResponse"}}}}},
}


async def v2_infer(request: Request, name: ModelName) -> Response:
    return await _infer(request, name, None)


async def v2_infer_version(request: Request, name: ModelName, version: Version) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    found = services(request)
    authorize(request, found)
    budget, exchange = found.budget, V2Exchange(header(request, HEADER_LENGTH), found.shared_memory)
    async with found.repository.lease(name, version) as model:
        content, header_length = await run_inference(model, await budget.read_body(request), exchange, budget,
                                                     found.offload, budget.arrived(request),
                                                     client_gone=client_gone(request))
    binary = None if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    if len(content) > PACK_ANSWERS_FROM:  # the header length is the unpacked answer's
        return await large_answer(request, found, content, binary)
    if binary is None:
        return JSONBytes(content)
    return Response(content, media_type="application/octet-stream", headers=binary)


OPENAPI_MODELS = (InferenceRequest, InferenceResponse)
_INFER_DESCRIPTION = ("Tensors in, tensors out, as the KServe V2 protocol defines them: a JSON body, or "
                      "Triton's binary tensor extension (a JSON header of Inference-Header-Content-Length "
                      "bytes, then the raw tensors). Outputs are binary where the request asks for it.")
HOT_ROUTES = [
    HotRoute("POST", "/v2/models/{name}/infer", v2_infer, summary="Run inference (JSON tensors or Triton binary tensors)",
             description=_INFER_DESCRIPTION + " Runs the newest served version.", openapi_extra=_INFER_DOC),
    HotRoute("POST", "/v2/models/{name}/versions/{version}/infer", v2_infer_version,
             summary="Run inference on one model version", description=_INFER_DESCRIPTION,
             openapi_extra=_INFER_DOC),
]
add_hot_routes(router, HOT_ROUTES)
