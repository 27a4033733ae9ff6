"""KServe V2 model endpoints, with Triton's binary tensors, model configuration and statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from app.http.budget import client_gone, positive_timeout
from app.http.examples import V2_EXAMPLES
from app.http.hot_routes import HotRoute, add_hot_routes
from app.http.responses import JSONResponse, header
from app.http.routes.common import MODEL_ERRORS, ModelName, Version, authorize, budget, offload, repository
from app.offload import HEAVY_BODY_BYTES
from app.protocol.binary import HEADER_LENGTH
from app.protocol.v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    check_requested_outputs,
    declared_exactly,
    decode_inputs,
    encode_response,
    parse_request,
    response_bytes,
)
from app.runtime import CUDA
from app.served_model import ServedModel

router = APIRouter(tags=["v2"])
PLATFORM = "onnxruntime_onnx"


def _triton_shape(shape: list[int]) -> list[int]:
    """One value per item ([-1]) is [-1, 1] to Triton's tools (dims [1] reshaped to []);
    the server takes [N] and [N, 1] alike."""
    return [-1, 1] if shape == [-1] else shape


def _metadata(model: ServedModel, versions: list[str]) -> dict[str, Any]:
    m = model.manifest
    return {
        "name": m.name, "versions": versions, "platform": PLATFORM,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": _triton_shape(t.shape)} for t in m.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs],
        "parameters": {"variant": model.variant, "providers": model.session.providers, "task": m.task,
                       "labels": m.labels},
    }


def _config(model: ServedModel, version_policy: dict[str, Any]) -> dict[str, Any]:
    """Triton's model configuration; dims leave out the batch axis since max_batch_size > 0."""
    m, policy = model.manifest, model.batcher.policy
    kind = "KIND_GPU" if model.session.providers[0] == CUDA else "KIND_CPU"

    def tensors(specs: list[Any]) -> list[dict[str, Any]]:
        out = []
        for t in specs:
            entry: dict[str, Any] = {"name": t.name, "data_type": f"TYPE_{t.datatype}",
                                     "dims": _triton_shape(t.shape)[1:]}
            if t.shape == [-1]:
                entry["reshape"] = {"shape": []}
            out.append(entry)
        return out

    return {
        "name": m.name, "platform": PLATFORM, "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": policy.max_batch_size,
        "input": tensors(m.inputs), "output": tensors(m.outputs),
        "dynamic_batching": {"max_queue_delay_microseconds": int(policy.max_queue_delay_s * 1e6),
                             "preferred_batch_size": [policy.max_batch_size]},
        # Triton's instances are what runs batches concurrently: here, the inference threads
        "instance_group": [{"name": m.name, "kind": kind, "count": policy.concurrent_batches}],
        "parameters": {"variant": {"string_value": model.variant}},
    }


# Registered before /v2/models/{name}, which would otherwise take "stats" for a model name.
@router.get("/v2/models/stats", summary="Triton statistics of every model",
            description="Triton's statistics extension: per served model version, request and batch counts "
                        "and the time spent queued, preparing inputs, computing and answering.")
async def all_stats(request: Request) -> Response:
    return JSONResponse({"model_stats": [m.stats.as_triton(m.name, m.version) for m in repository(request).all()]})


_METADATA_DESCRIPTION = ("The V2 model metadata: its inputs and outputs (names, datatypes, shapes with -1 for "
                         "the batch axis), platform, and as parameters the ONNX variant served, the execution "
                         "providers, the task and the labels.")


@router.get("/v2/models/{name}", response_model=MetadataModelResponse, responses=MODEL_ERRORS,
            summary="Model metadata: inputs, outputs, platform, variant and provider",
            description=_METADATA_DESCRIPTION + " `versions` lists every served version.")
async def model_metadata(request: Request, name: ModelName) -> Response:
    models = repository(request)
    return JSONResponse(_metadata(models.get(name), models.versions_of(name)))


@router.get("/v2/models/{name}/versions/{version}", response_model=MetadataModelResponse, responses=MODEL_ERRORS,
            summary="Metadata of one model version", description=_METADATA_DESCRIPTION)
async def version_metadata(request: Request, name: ModelName, version: Version) -> Response:
    model = repository(request).get(name, version)
    return JSONResponse(_metadata(model, [model.version]))


_READY_DESCRIPTION = "200 with an empty body when it serves requests; 404 or 503 (with the reason) when not."


@router.get("/v2/models/{name}/ready", responses=MODEL_ERRORS, summary="Model readiness",
            description=_READY_DESCRIPTION)
async def model_ready(request: Request, name: ModelName) -> Response:
    repository(request).get(name)  # raises 404 / 503
    return Response(status_code=200)


@router.get("/v2/models/{name}/versions/{version}/ready", responses=MODEL_ERRORS, summary="Model version readiness",
            description=_READY_DESCRIPTION)
async def version_ready(request: Request, name: ModelName, version: Version) -> Response:
    repository(request).get(name, version)
    return Response(status_code=200)


_CONFIG_DESCRIPTION = ("Triton's model configuration, as its tools (perf_analyzer, model analyzer) read it: "
                       "max_batch_size, dynamic batching delay, inputs and outputs without the batch axis, "
                       "instance group, and the version policy applied.")


@router.get("/v2/models/{name}/config", responses=MODEL_ERRORS, summary="Triton model configuration",
            description=_CONFIG_DESCRIPTION)
async def model_config(request: Request, name: ModelName) -> Response:
    models = repository(request)
    return JSONResponse(_config(models.get(name), models.policy_of(name).as_triton()))


@router.get("/v2/models/{name}/versions/{version}/config", responses=MODEL_ERRORS,
            summary="Triton model configuration of one version", description=_CONFIG_DESCRIPTION)
async def version_config(request: Request, name: ModelName, version: Version) -> Response:
    models = repository(request)
    return JSONResponse(_config(models.get(name, version), models.policy_of(name).as_triton()))


@router.get("/v2/models/{name}/stats", responses=MODEL_ERRORS, summary="Triton statistics of one model",
            description="Triton's statistics of every served version of the model (see /v2/models/stats).")
async def model_stats(request: Request, name: ModelName) -> Response:
    models = repository(request)
    models.get(name)  # 404 / 503 when it is not served
    return JSONResponse({"model_stats": [stats.as_triton(name, v) for v, stats in models.stats_of(name)]})


@router.get("/v2/models/{name}/versions/{version}/stats", responses=MODEL_ERRORS,
            summary="Triton statistics of one model version",
            description="Triton's statistics of one served version (see /v2/models/stats).")
async def version_stats(request: Request, name: ModelName, version: Version) -> Response:
    model = repository(request).get(name, version)
    return JSONResponse({"model_stats": [model.stats.as_triton(model.name, model.version)]})


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
    authorize(request)
    limits = budget(request)
    model = repository(request).acquire(name, version)
    try:
        body = await limits.read_body(request)
        binary_header = header(request, HEADER_LENGTH)
        if len(body) > HEAVY_BODY_BYTES:
            infer_request, inputs = await offload(request).run(_decode, body, binary_header, model)
        else:
            infer_request, inputs = _decode(body, binary_header, model)
        rows = len(next(iter(inputs.values())))
        size = response_bytes(infer_request, model.manifest, rows)
        limits.check_response(size, rows)
        requested = (infer_request.parameters or {}).get("timeout")
        timeout_s = None if requested is None else positive_timeout(requested, "parameters.timeout (µs)", 1e-6)
        due, timeout = limits.deadline(request, timeout_s)
        outputs = await model.infer(inputs, due, timeout, client_gone(request))
    finally:
        model.release()
    del body, inputs  # the request's bytes and tensors go before the answer is made
    for item in infer_request.inputs:
        item.data = None
    if not declared_exactly(model.manifest):  # dynamic output axes are known only now
        size = response_bytes(infer_request, model.manifest, rows, outputs)
        limits.check_response(size, rows)
    if size > HEAVY_BODY_BYTES:  # as large bodies are decoded: off the event loop
        content, header_length = await offload(request).run(encode_response, infer_request, model.manifest, outputs)
    else:
        content, header_length = encode_response(infer_request, model.manifest, outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


def _decode(body: bytes, binary_header: str | None, model: ServedModel
            ) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """The request checked whole against the model: nothing bad reaches its batch."""
    infer_request, binary = parse_request(body, binary_header)
    model.codec.check_shapes({item.name: item.shape for item in infer_request.inputs})
    inputs = decode_inputs(infer_request, binary, model.manifest)
    model.codec.check_tensors(inputs)  # raw tensors: check what the model needs beyond shape
    check_requested_outputs(infer_request, model.manifest)
    return infer_request, inputs


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
