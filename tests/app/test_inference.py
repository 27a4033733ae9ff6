"""The one inference path (app/inference.py), with a real model and each protocol's exchange:
what runs off the event loop, the answer's limit, the deadline asked for."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest

from app import inference
from app.errors import PayloadTooLarge
from app.inference import run_inference
from app.offload import Offload
from app.protocol.v1 import V1
from app.protocol.v2 import V2Exchange
from app.served_model import ServedModel
from tests.app.conftest import b64_png, sample_images
from tests.app.test_served_model import started


class Recorded:
    """Limits that record what the path asked of them."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.offload = Offload(1)
        self.limit = limit
        self.asked_timeouts: list[float | None] = []
        self.checked: list[tuple[int, int]] = []

    def deadline_from(self, arrived: float, requested_s: float | None) -> tuple[float, float]:
        self.asked_timeouts.append(requested_s)
        return arrived + 10, 10.0

    def check_response(self, size_bound: int, rows: int) -> None:
        self.checked.append((size_bound, rows))
        if size_bound > self.limit:
            raise PayloadTooLarge("too large")

    async def run(self, model: ServedModel, body: bytes, exchange: Any, timeout_s: float | None = None) -> Any:
        return await run_inference(model, body, exchange, self, self.offload, time.monotonic(), timeout_s)


def v2_body(model: ServedModel, rows: int, **extra: Any) -> bytes:
    """The V2 request of the tensor V1's codec makes of sample_images(rows)."""
    pixels = model.codec.instances_to_inputs([image.tolist() for image in sample_images(rows)])["pixels"]
    return orjson.dumps({"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32",
                                     "data": pixels.ravel().tolist()}], **extra})


async def test_v1_and_v2_answer_through_one_path() -> None:
    model = started()
    recorded = Recorded()
    images = sample_images(2)
    v1 = orjson.loads(await recorded.run(model, orjson.dumps({"instances": [i.tolist() for i in images]}), V1,
                                         timeout_s=3.0))
    content, header_length = await recorded.run(model, v2_body(model, 2, parameters={"timeout": 5_000_000}),
                                                V2Exchange(None), timeout_s=3.0)
    v2 = orjson.loads(content)
    assert header_length is None
    logits = np.array(v2["outputs"][0]["data"]).reshape(v2["outputs"][0]["shape"])
    assert [p["label"] for p in v1["predictions"]] == [model.manifest.labels[i] for i in logits.argmax(axis=1)]
    # V1's from the transport (a header); V2's own parameters.timeout, in seconds, before the transport's
    assert recorded.asked_timeouts == [3.0, pytest.approx(5.0)]
    assert [rows for _, rows in recorded.checked] == [2, 2]
    await model.retire(grace_s=1)


async def test_an_answer_over_the_limit_is_refused_before_the_model_runs() -> None:
    model = started()
    recorded = Recorded(limit=100)
    with pytest.raises(PayloadTooLarge):
        await recorded.run(model, v2_body(model, 4), V2Exchange(None))
    assert model.stats.inference_count == 0
    await model.retire(grace_s=1)


async def test_large_bodies_and_heavy_content_decode_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    model = started()
    recorded = Recorded()
    seen: list[str] = []
    real = model.codec.instances_to_inputs

    def spy(instances: list[Any]) -> Any:
        seen.append(threading.current_thread().name)
        return real(instances)

    monkeypatch.setattr(model.codec, "instances_to_inputs", spy)
    image = sample_images(1)[0]
    loop = threading.current_thread().name
    await recorded.run(model, orjson.dumps({"instances": [image.tolist()]}), V1)
    await recorded.run(model, orjson.dumps({"instances": [{"b64": b64_png(image)}]}), V1)
    monkeypatch.setattr(inference, "HEAVY_BODY_BYTES", 100)
    await recorded.run(model, orjson.dumps({"instances": [image.tolist()]}), V1)
    assert seen[0] == loop  # pixels in a small body: on the loop
    assert seen[1].startswith("decode")  # an encoded image: off it
    assert seen[2].startswith("decode")  # a large body: off it
    await model.retire(grace_s=1)
