"""The naive server: what one would write first. FastAPI, and one ONNX Runtime call per
request on the event loop, with ORT's default session options; no batching, no queue.

It takes the same V1 image requests as the service, so the two answer the same body:
at concurrency 1 it is the latency to match; under load, what batching is for.

    NAIVE_MODEL_DIR=models uvicorn load_tests.naive:app --port 8002
    NAIVE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider ...   # on a GPU
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request, Response

from app.manifest import ImagePreprocessing
from app.preprocess import normalize_pixels
from load_tests import samples

_folder, _manifest = samples.latest(Path(os.environ.get("NAIVE_MODEL_DIR", "models")), "fashion-cnn")
# NAIVE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider: the same endpoint on a GPU.
_providers = os.environ.get("NAIVE_PROVIDERS", "CPUExecutionProvider").split(",")
_device = "cuda" if _providers[0] == "CUDAExecutionProvider" else "cpu"
_variant = _manifest.variants[_manifest.preferred_variant.get(_device, "fp32")]
_session = ort.InferenceSession(str(_folder / _variant.file), providers=_providers)
_spec = _manifest.preprocessing
assert isinstance(_spec, ImagePreprocessing)
_input = _manifest.inputs[0].name

app = FastAPI()


@app.post("/v1/models/{name}:predict")
async def predict(request: Request, name: str) -> Response:
    instances = orjson.loads(await request.body()).get("instances")
    if not instances:
        return Response(b'{"error": "no instances"}', status_code=400, media_type="application/json")
    logits = _session.run(None, {_input: normalize_pixels(np.asarray(instances, dtype=np.float32), _spec)})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = e / e.sum(axis=1, keepdims=True)
    predictions = [{"label": _manifest.labels[int(i)], "index": int(i), "probabilities": p.round(6).tolist()}
                   for i, p in zip(probabilities.argmax(1), probabilities, strict=True)]
    return Response(orjson.dumps({"predictions": predictions, "model_name": _manifest.name,
                                  "model_version": str(_manifest.version)}), media_type="application/json")


@app.get("/v2/health/ready")
async def ready() -> Response:
    return Response(status_code=200)
