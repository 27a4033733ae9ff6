"""Task-level endpoints in the KServe V1 / TF-Serving style: raw images and raw text in, labels out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.errors import MethodNotAllowed
from app.http.budget import client_gone
from app.http.encodings import PACK_ANSWERS_FROM
from app.http.examples import V1_EXAMPLES
from app.http.hot_routes import HotRoute, add_hot_routes
from app.http.responses import JSONBytes, JSONResponse
from app.http.routes.common import ModelName, authorize, errors, large_answer
from app.http.services import services
from app.inference import run_inference
from app.protocol.v1 import V1
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
            "inputs": [t.model_dump() for t in m.inputs], "preprocessing": m.preprocessing.model_dump() if m.preprocessing else None,
            "max_batch_size": model.policy.max_batch_size}


@router.get("/v1/models", summary="Every served model with its labels and what an instance is",
            description="Per served model: name, version, task, labels, what one instance of its predict "
                        "request is, the ONNX variant served, inputs, preprocessing and max batch size.")
async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [_describe(m) for m in services(request).repository.all()]})


@router.get("/v1/models/{name}", responses=errors(404, 405, 503), summary="One model's description",
            description="As in GET /v1/models, for one model.")
async def describe_model(request: Request, name: ModelName) -> Response:
    if name.endswith(":predict"):  # the predict route's path, asked with GET
        raise MethodNotAllowed(f"{request.url.path} takes POST with a JSON body {{\"instances\": [...]}}", "POST")
    return JSONResponse(_describe(services(request).repository.get(name)))


async def v1_predict(request: Request, name: ModelName) -> Response:
    found = services(request)
    authorize(request, found)
    budget = found.budget
    timeout_s = budget.requested_timeout_s(request)  # V1 asks with a header
    async with found.repository.lease(name) as model:
        answer = await run_inference(model, await budget.read_body(request), V1, budget, found.offload,
                                     budget.arrived(request), timeout_s, client_gone(request))
    if len(answer) > PACK_ANSWERS_FROM:
        return await large_answer(request, found, answer)
    return JSONBytes(answer)


HOT_ROUTES = [
    HotRoute("POST", "/v1/models/{name}:predict", v1_predict, summary='Classify images or texts: {"instances": [...]}',
             description="Each instance is classified; the answer holds one prediction per instance, in order: "
                         "the label, its index and every label's probability. Instances are checked "
                         "whole before anything is queued: one bad instance is a 400 naming it.",
             openapi_extra=_PREDICT_DOC),
]
add_hot_routes(router, HOT_ROUTES)
