"""What one request may cause: a bounded answer, integers that are integers, timeouts that
are numbers (issue 22, items 1 and 7)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import pytest

from app import inference
from app.protocol import v1, v2
from tests.app.conftest import sample_images, serving


def v2_images(n: int, outputs: list[dict[str, Any]] | None = None, binary: bool = False) -> dict[str, Any]:
    pixels = (sample_images(n).astype(np.float32) / 255).reshape(n, 1, 28, 28)
    body: dict[str, Any] = {"inputs": [{"name": "pixels", "shape": [n, 1, 28, 28], "datatype": "FP32",
                                        "data": pixels.ravel().tolist()}]}
    if outputs is not None:
        body["outputs"] = outputs
    if binary:
        body["parameters"] = {"binary_data_output": True}
    return body


def v2_tokens(data: list[Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "token_ids", "shape": [1, len(data)], "datatype": "INT64", "data": data},
                                       {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [len(data)]}]}
    if parameters is not None:
        body["parameters"] = parameters
    return body


async def test_an_output_named_twice_is_a_400_and_nothing_runs() -> None:
    async with serving() as client:
        repeated = await client.post("/v2/models/fashion-cnn/infer",
                                     json=v2_images(1, [{"name": "logits"}] * 50_000))
        once = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(1, [{"name": "logits"}]))
        computed = client._transport.app.services.repository.get("fashion-cnn").stats.inference_count  # type: ignore[attr-defined]
    assert repeated.status_code == 400
    assert "['logits'] are requested more than once" in repeated.json()["error"]
    assert once.status_code == 200, once.text
    assert computed == 1  # only the good request's one row was computed


async def test_answers_larger_than_max_response_bytes_are_a_413_before_they_are_computed() -> None:
    # 64 rows of 10 logits: at most 25 bytes each as JSON, 4 as binary.
    async with serving(max_response_bytes=64 * 10 * 12) as client:
        as_json = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(64))
        as_binary = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(64, binary=True))
        v1_rows = await client.post("/v1/models/fashion-cnn:predict",
                                    json={"instances": [image.tolist() for image in sample_images(64)]})
        small = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(2))
        computed = client._transport.app.services.repository.get("fashion-cnn").stats.inference_count  # type: ignore[attr-defined]
    assert as_json.status_code == 413
    error = as_json.json()["error"]
    assert "64 rows" in error
    assert "over the limit of 7,680 bytes" in error
    assert v1_rows.status_code == 413
    assert as_binary.status_code == 200, as_binary.text
    assert small.status_code == 200, small.text
    assert computed == 64 + 2  # the refused ones never ran


async def test_large_answers_are_encoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, str] = {}

    def spy(name: str, real: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            threads[name] = threading.current_thread().name
            return real(*args)
        return wrapped

    monkeypatch.setattr(inference, "HEAVY_BODY_BYTES", 1000)
    monkeypatch.setattr(v2, "encode_response", spy("v2", v2.encode_response))
    monkeypatch.setattr(v1, "predictions", spy("v1", v1.predictions))
    async with serving() as client:
        loop_thread = threading.current_thread().name
        small = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(1))
        assert threads.pop("v2") == loop_thread
        large = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(8))
        large_v1 = await client.post("/v1/models/fashion-cnn:predict",
                                     json={"instances": [image.tolist() for image in sample_images(8)]})
    assert small.status_code == large.status_code == large_v1.status_code == 200
    assert threads["v2"].startswith("decode")
    assert threads["v1"].startswith("decode")


@pytest.mark.parametrize(("data", "message"), [
    ([5, 1.9, 7], "'token_ids' has datatype INT64: 1.9 is not a whole number"),
    ([5, 1e300], "values must lie in -9223372036854775808..9223372036854775807 for INT64, got 1e+300"),
    ([5, 2**63], "values must lie in -9223372036854775808..9223372036854775807 for INT64, got 9.2"),
    ([5, "7"], "data is not a list of INT64 numbers"),
])
async def test_integer_tensors_take_whole_numbers_only(data: list[Any], message: str) -> None:
    async with serving() as client:
        bad = await client.post("/v2/models/sst2-lstm/infer", json=v2_tokens(data))
        whole_floats = await client.post("/v2/models/sst2-lstm/infer", json=v2_tokens([5.0, 7.0]))
        ints = await client.post("/v2/models/sst2-lstm/infer", json=v2_tokens([5, 7]))
    assert bad.status_code == 400, bad.text
    assert message in bad.json()["error"]
    assert whole_floats.status_code == 200, whole_floats.text
    assert whole_floats.json()["outputs"] == ints.json()["outputs"]


@pytest.mark.parametrize("timeout", [True, False, "soon", [1000], {"us": 1}, 0, -5])
async def test_a_timeout_that_is_not_a_positive_number_is_a_400(timeout: Any) -> None:
    async with serving() as client:
        answer = await client.post("/v2/models/sst2-lstm/infer", json=v2_tokens([5, 7], {"timeout": timeout}))
        numeric = await client.post("/v2/models/sst2-lstm/infer", json=v2_tokens([5, 7], {"timeout": 5_000_000}))
    assert answer.status_code == 400, answer.text
    assert "parameters.timeout (µs) must be a positive number" in answer.json()["error"]
    assert numeric.status_code == 200, numeric.text


async def test_large_bodies_at_once_are_bounded_together_and_memory_is_returned_after() -> None:
    import asyncio

    from app.http import budget as budget_module

    trims: list[int] = []
    gate = asyncio.Event()
    body = orjson.dumps(v2_images(120))  # about 400 KB: a large body

    async def held_back() -> Any:
        yield body[:1000]
        await gate.wait()  # the first request holds its bytes while the second one arrives
        yield body[1000:]

    async with serving(max_body_bytes=len(body) + 1000, max_large_bodies_bytes=len(body) + 1000) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        large = app.services.budget.large_bodies
        large.memory.trim = lambda: trims.append(large.held)
        first = asyncio.ensure_future(client.post("/v2/models/fashion-cnn/infer", content=held_back(),
                                                  headers={"content-length": str(len(body))}))
        for _ in range(200):
            if large.held:
                break
            await asyncio.sleep(0.01)
        second = await client.post("/v2/models/fashion-cnn/infer", content=body)
        small = await client.post("/v2/models/fashion-cnn/infer", json=v2_images(1))
        gate.set()
        first_answer = await first
        third = await client.post("/v2/models/fashion-cnn/infer", content=body)
        await asyncio.sleep(budget_module.TRIM_AFTER_S + 0.5)
        held_after = large.held
    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert "bytes of large bodies already" in second.json()["error"]
    assert small.status_code == 200  # small bodies are not counted
    assert first_answer.status_code == 200, first_answer.text
    assert third.status_code == 200  # the first one's bytes were given back
    assert held_after == 0
    assert trims == [0]  # free memory handed back once, after the burst
