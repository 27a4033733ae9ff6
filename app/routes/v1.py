"""Task-level endpoints in the KServe V1 / TF-Serving style: raw images and raw text in, labels out."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.routing import Route

from app.errors import InvalidInput, UnprocessableInput
from app.repository import ServedModel
from app.routes.body import JSONResponse, read_body
from app.routes.common import ERRORS, repository
from app.tasks import predictions

router = APIRouter(tags=["v1"])

_PREDICT_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["instances"], "properties": {
            "instances": {"type": "array", "minItems": 1, "items": {},
                          "description": "image models: 28x28 arrays of pixels 0-255 or "
                                         '{"b64": "<base64 PNG/JPEG>"}; text models: strings'}}},
        "examples": {
            "sst2-lstm": {"summary": "text", "value": {"instances": ["a gripping, beautifully acted film"]}},
            "fashion-cnn": {"summary": "image as base64 PNG", "value": {"instances": [{"b64": "iVBORw0KGgo..."}]}},
        },
    }}},
    "responses": {"200": {"content": {"application/json": {"example": {
        "predictions": [{"label": "positive", "index": 1, "probabilities": [0.04, 0.96]}],
        "model_name": "sst2-lstm", "model_version": "1"}}}}},
}


def _describe(model: ServedModel) -> dict[str, Any]:
    m = model.manifest
    return {"name": m.name, "version": model.version, "task": m.task, "labels": m.labels,
            "instance": model.task.describe_instance(), "variant": model.variant,
            "inputs": [t.model_dump() for t in m.inputs], "preprocessing": m.preprocessing.model_dump(),
            "max_batch_size": model.batcher.policy.max_batch_size}


@router.get("/v1/models", summary="Every served model with its labels and what an instance is")
async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [_describe(m) for m in repository(request).all()]})


@router.get("/v1/models/{name}", responses=ERRORS, summary="One model's description")
async def describe_model(request: Request, name: str) -> Response:
    return JSONResponse(_describe(repository(request).get(name)))


@router.post("/v1/models/{name}:predict", responses=ERRORS, openapi_extra=_PREDICT_DOC,
             summary="Classify images or texts: {\"instances\": [...]}")
async def v1_predict_documented(request: Request, name: str) -> Response:
    """Documents the endpoint; requests are served through HOT_ROUTES (app/fastpath.py)."""
    return await v1_predict(request)


async def v1_predict(request: Request) -> Response:
    model = repository(request).get(request.path_params["name"])
    settings = request.app.state.settings
    body = await read_body(request, settings.max_body_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from e
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list):
        raise UnprocessableInput('request body must be a JSON object {"instances": [...]}')
    if not instances:
        raise InvalidInput("'instances' is empty: send at least one instance")
    inputs = model.task.instances_to_inputs(instances)
    outputs = await model.infer(inputs, settings.request_timeout_s)
    return JSONResponse({"predictions": predictions(outputs, model.manifest.labels),
                          "model_name": model.name, "model_version": model.version})


# Dispatched by app/fastpath.py in front of FastAPI's middleware and routing.
HOT_ROUTES = [Route("/v1/models/{name}:predict", v1_predict, methods=["POST"])]
