"""Task-level endpoints in the KServe V1 / TF-Serving style: raw images and raw text in, labels out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.codecs import predictions, predictions_bytes_bound
from app.errors import InvalidInput, MethodNotAllowed, UnprocessableInput
from app.http.budget import client_gone
from app.http.examples import V1_EXAMPLES
from app.http.hot_routes import HotRoute, add_hot_routes
from app.http.responses import JSONResponse
from app.http.routes.common import ModelName, authorize, budget, errors, offload, repository
from app.offload import HEAVY_BODY_BYTES
from app.protocol.v2 import json_object
from app.served_model import ServedModel

router = APIRouter(tags=["v1"])

_PREDICT_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["instances"], "properties": {
            "instances": {"type": "array", "minItems": 1, "items": {},
                          "description": "image models: raw pixels 0-255 as a 28x28 array or a flat list of "
                                         '784, or {"b64": "<base64 PNG/JPEG>"}; text models: strings'}}},
        "examples": V1_EXAMPLES,
    }}},
    "responses": {"200": {"content": {"application/json": {"example": {
        "predictions": [{"label": "positive", "index": 1, "probabilities": [0.04, 0.96]}],
        "model_name": "sst2-lstm", "model_version": "1"}}}}},
}


def _describe(model: ServedModel) -> dict[str, Any]:
    m = model.manifest
    return {"name": m.name, "version": model.version, "task": m.task, "labels": m.labels,
            "instance": model.codec.describe_instance(), "variant": model.variant,
            "inputs": [t.model_dump() for t in m.inputs], "preprocessing": m.preprocessing.model_dump(),
            "max_batch_size": model.batcher.policy.max_batch_size}


@router.get("/v1/models", summary="Every served model with its labels and what an instance is",
            description="Per served model: name, version, task, labels, what one instance of its predict "
                        "request is, the ONNX variant served, inputs, preprocessing and max batch size.")
async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [_describe(m) for m in repository(request).all()]})


@router.get("/v1/models/{name}", responses=errors(404, 405, 503), summary="One model's description",
            description="As in GET /v1/models, for one model.")
async def describe_model(request: Request, name: ModelName) -> Response:
    if name.endswith(":predict"):  # the predict route's path, asked with GET
        raise MethodNotAllowed(f"{request.url.path} takes POST with a JSON body {{\"instances\": [...]}}", "POST")
    return JSONResponse(_describe(repository(request).get(name)))


async def v1_predict(request: Request, name: ModelName) -> Response:
    authorize(request)
    limits = budget(request)
    due, timeout = limits.deadline(request, limits.requested_timeout_s(request))
    model = repository(request).acquire(name)
    try:
        body = await limits.read_body(request)
        heavy = len(body) > HEAVY_BODY_BYTES
        instances = await offload(request).run(_instances, body) if heavy else _instances(body)
        codec = model.codec
        if heavy or codec.heavy(instances):
            inputs = await offload(request).run(codec.instances_to_inputs, instances)
        else:
            inputs = codec.instances_to_inputs(instances)
        rows = len(next(iter(inputs.values())))
        size = predictions_bytes_bound(rows, model.manifest.labels)
        limits.check_response(size, rows)
        del body, instances
        outputs = await model.infer(inputs, due, timeout, client_gone(request))
    finally:
        model.release()
    del inputs
    if size > HEAVY_BODY_BYTES:
        return await offload(request).run(_answer, outputs, model)
    return _answer(outputs, model)


def _answer(outputs: dict[str, Any], model: ServedModel) -> JSONResponse:
    return JSONResponse({"predictions": predictions(outputs, model.manifest.labels),
                         "model_name": model.name, "model_version": model.version})


def _instances(body: bytes) -> list[Any]:
    instances = json_object(body, '{"instances": [...]}').get("instances")
    if not isinstance(instances, list):
        raise UnprocessableInput('request body must be a JSON object {"instances": [...]}')
    if not instances:
        raise InvalidInput("'instances' is empty: send at least one instance")
    return instances


HOT_ROUTES = [
    HotRoute("POST", "/v1/models/{name}:predict", v1_predict, summary='Classify images or texts: {"instances": [...]}',
             description="Each instance is classified; the answer holds one prediction per instance, in order: "
                         "the label, its index and every label's probability. Instances are checked "
                         "whole before anything is queued: one bad instance is a 400 naming it.",
             openapi_extra=_PREDICT_DOC),
]
add_hot_routes(router, HOT_ROUTES)
