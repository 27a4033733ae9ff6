"""The HTTP ceiling: the same routes on the same stack (uvicorn, uvloop, httptools, FastAPI,
orjson) that only parse the body and answer, with no validation, batching or inference.
Whatever the service reaches is a fraction of this.

    uvicorn load_tests.ceiling:app --port 8001
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
_ANSWER = orjson.dumps({"predictions": [{"label": "x", "index": 0, "probabilities": [1.0]}]})


_V2_ANSWER = orjson.dumps({"model_name": "x", "model_version": "1", "outputs": [
    {"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]})


async def _parse_only(request: Request, items: str, answer: bytes) -> Response:
    """The body parsed, its list of items looked at, a fixed answer of the service's size."""
    body = orjson.loads(await request.body())
    if not body.get(items):
        return Response(b'{"error": "no %s"}' % items.encode(), status_code=400, media_type="application/json")
    return Response(answer, media_type="application/json")


@app.post("/v1/models/{name}:predict")
async def parse_only(request: Request, name: str) -> Response:
    return await _parse_only(request, "instances", _ANSWER)


@app.post("/v2/models/{name}/infer")
async def parse_only_v2(request: Request, name: str) -> Response:
    """The V2 JSON ceiling."""
    return await _parse_only(request, "inputs", _V2_ANSWER)


@app.get("/v2/health/ready")
async def ready() -> Response:
    return Response(status_code=200)
