"""The HTTP API in-process (httpx ASGI transport under the lifespan): answers and every error path."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from app.manifest import load_manifest, version_folders
from app.preprocess import Tokenizer, decode_image, normalize_pixels
from tests.app.conftest import b64_png, png_bytes, reference_session, sample_images, serving
from tests.conftest import MODELS, model_folder


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


TEXTS = ["a gripping , beautifully acted film .", "dull , lifeless and far too long", "", "Wow!!! 🎬 ça marche"]


def v2_pixels(images: np.ndarray) -> dict:
    spec = load_manifest(model_folder("fashion-cnn")).preprocessing
    x = normalize_pixels(images, spec)  # type: ignore[arg-type]
    return {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


async def test_health_and_metadata() -> None:
    async with serving() as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
        server = (await client.get("/v2")).json()
        assert "binary_tensor_data" in server["extensions"]
        meta = (await client.get("/v2/models/fashion-cnn")).json()
        assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert meta["parameters"]["providers"][0] == "CPUExecutionProvider"
        newest = model_folder("sst2-lstm").name  # the default policy (latest:1) serves the newest
        assert (await client.get(f"/v2/models/sst2-lstm/versions/{newest}")).json()["versions"] == [newest]
        assert (await client.get("/v2/models/sst2-lstm/ready")).status_code == 200
        config = (await client.get("/v2/models/fashion-cnn/config")).json()
        assert config["max_batch_size"] == load_manifest(model_folder("fashion-cnn")).batching.max_batch_size
        assert config["input"][0]["dims"] == [1, 28, 28]
        assert config["instance_group"][0]["count"] == 1  # one inference thread per model
        listed = (await client.get("/v1/models")).json()["models"]
        assert {m["name"] for m in listed} == {"fashion-cnn", "sst2-lstm"}


async def test_v1_images_match_direct_onnx_runtime() -> None:
    session, manifest = reference_session("fashion-cnn")
    images = sample_images(5)
    instances = [img.tolist() for img in images[:3]] + [{"b64": b64_png(img)} for img in images[3:]]
    async with serving() as client:
        response = await client.post("/v1/models/fashion-cnn:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    body = response.json()
    (logits,) = session.run(None, {"pixels": normalize_pixels(images, manifest.preprocessing)})
    expected = softmax(logits.astype(np.float64))
    got = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p["index"] for p in body["predictions"]] == expected.argmax(1).tolist()
    assert body["predictions"][0]["label"] == manifest.labels[body["predictions"][0]["index"]]
    assert body["model_name"] == "fashion-cnn"
    assert body["model_version"] == model_folder("fashion-cnn").name


async def test_v1_integer_and_fractional_pixels_are_both_accepted() -> None:
    """Integer pixels take a uint8 path, others a float path: same scaling, same answers."""
    image = sample_images(1, seed=3)[0].astype(np.float64)
    as_fractions = image + 0.25 * (image < 255)  # stays within [0, 255]
    async with serving() as client:
        ints = await client.post("/v1/models/fashion-cnn:predict", json={"instances": [image.astype(int).tolist()]})
        floats = await client.post("/v1/models/fashion-cnn:predict", json={"instances": [image.tolist()]})
        fractions = await client.post("/v1/models/fashion-cnn:predict", json={"instances": [as_fractions.tolist()]})
    assert ints.status_code == floats.status_code == fractions.status_code == 200, fractions.text
    assert ints.json() == floats.json()
    session, manifest = reference_session("fashion-cnn")
    (logits,) = session.run(None, {"pixels": normalize_pixels(as_fractions[None], manifest.preprocessing)})
    np.testing.assert_allclose(fractions.json()["predictions"][0]["probabilities"],
                               softmax(logits.astype(np.float64))[0], atol=1e-5)


async def test_v1_images_of_other_sizes_and_colours_are_converted() -> None:
    big = np.kron(sample_images(1)[0], np.ones((2, 2), dtype=np.uint8))  # 56x56
    rgb = np.stack([sample_images(1)[0]] * 3, axis=-1)
    async with serving() as client:
        response = await client.post("/v1/models/fashion-cnn:predict", json={"instances": [
            {"b64": b64_png(big)}, {"b64": b64_png(rgb, "RGB")}, sample_images(1)[0].tolist()]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    # The 56x56 image is answered as the shared decoder resizes it, and like the original.
    session, manifest = reference_session("fashion-cnn")
    resized = decode_image(png_bytes(big), manifest.preprocessing)
    (logits,) = session.run(None, {"pixels": normalize_pixels(resized[None], manifest.preprocessing)})
    np.testing.assert_allclose(predictions[0]["probabilities"], softmax(logits.astype(np.float64))[0], atol=1e-5)
    assert predictions[0]["index"] == predictions[2]["index"]
    # A grey RGB image is the same image as its single channel.
    np.testing.assert_allclose(predictions[1]["probabilities"], predictions[2]["probabilities"], atol=1e-5)


async def test_v1_flat_lists_data_urls_and_light_backgrounds_get_the_same_answer() -> None:
    image = sample_images(1, seed=5)[0]
    inverted = 255 - image  # a product photo: a dark object on white
    png = b64_png(image)
    async with serving() as client:
        response = await client.post("/v1/models/fashion-cnn:predict", json={"instances": [
            image.tolist(), image.flatten().tolist(), {"b64": f"data:image/png;base64,{png}"},
            inverted.tolist(), {"b64": b64_png(inverted)}]})
    assert response.status_code == 200, response.text
    first, *others = response.json()["predictions"]
    for other in others:
        np.testing.assert_allclose(other["probabilities"], first["probabilities"], atol=1e-6)


def test_light_backgrounds_are_found_from_the_border_and_inverted() -> None:
    from app.preprocess import match_background

    _, manifest = reference_session("fashion-cnn")
    spec = manifest.preprocessing
    dark = sample_images(3, seed=7)
    mixed = np.stack([dark[0], 255 - dark[1], dark[2]])
    np.testing.assert_array_equal(match_background(mixed, spec), dark)
    assert match_background(dark, spec) is dark  # nothing to invert: no copy
    light_model = spec.model_copy(update={"background": "light"})
    np.testing.assert_array_equal(match_background(dark, light_model), 255 - dark)


async def test_undecodable_images_are_described_without_object_reprs() -> None:
    async with serving() as client:
        response = await client.post("/v1/models/fashion-cnn:predict",
                                     json={"instances": [{"b64": base64.b64encode(b"GIF89a" + bytes(40)).decode()}]})
    assert response.status_code == 400
    assert "0x" not in response.json()["error"]
    assert "cannot decode image" in response.json()["error"]


async def test_the_wrong_method_on_a_predict_route_is_405_naming_the_right_one() -> None:
    async with serving() as client:
        v1 = await client.get("/v1/models/sst2-lstm:predict")
        v2 = await client.get("/v2/models/sst2-lstm/infer")
    for response in (v1, v2):
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "POST"
    assert "POST" in v1.json()["error"]


async def test_v1_texts_match_direct_onnx_runtime() -> None:
    session, manifest = reference_session("sst2-lstm")
    tokenizer = Tokenizer.from_file(model_folder("sst2-lstm") / "vocab.txt", manifest.preprocessing)
    async with serving() as client:
        response = await client.post("/v1/models/sst2-lstm:predict", json={"instances": TEXTS})
    assert response.status_code == 200, response.text
    got = np.array([p["probabilities"] for p in response.json()["predictions"]])
    ids, lengths = tokenizer.encode_batch(TEXTS)  # the request is one batch, padded to its longest
    (logits,) = session.run(None, {"token_ids": ids, "lengths": lengths})
    np.testing.assert_allclose(got, softmax(logits.astype(np.float64)), atol=1e-5)


async def test_fp32_text_answers_do_not_depend_on_batch_mates() -> None:
    # Dynamic int8 scales activations per batch, so only fp32 is exact across batchings.
    session, manifest = reference_session("sst2-lstm", "fp32")
    tokenizer = Tokenizer.from_file(model_folder("sst2-lstm") / "vocab.txt", manifest.preprocessing)
    async with serving(variant="fp32") as client:
        response = await client.post("/v1/models/sst2-lstm:predict", json={"instances": TEXTS})
    got = np.array([p["probabilities"] for p in response.json()["predictions"]])
    for text, row in zip(TEXTS, got, strict=True):  # one at a time: no padding in the reference
        ids, lengths = tokenizer.encode_batch([text])
        (logits,) = session.run(None, {"token_ids": ids, "lengths": lengths})
        np.testing.assert_allclose(row, softmax(logits.astype(np.float64))[0], atol=1e-5)


async def test_v2_json_and_binary_tensors_agree() -> None:
    images = sample_images(3, seed=1)
    body = v2_pixels(images)
    async with serving() as client:
        as_json = await client.post("/v2/models/fashion-cnn/infer", json=body)
        header = {"inputs": [{"name": "pixels", "shape": [3, 1, 28, 28], "datatype": "FP32",
                              "parameters": {"binary_data_size": 3 * 784 * 4}}],
                  "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
        header_bytes = orjson.dumps(header)
        raw = np.asarray(body["inputs"][0]["data"], dtype="<f4").tobytes()
        as_binary = await client.post(f"/v2/models/fashion-cnn/versions/{model_folder('fashion-cnn').name}/infer", content=header_bytes + raw,
                                      headers={"Inference-Header-Content-Length": str(len(header_bytes))})
    assert as_json.status_code == 200, as_json.text
    assert [o["name"] for o in as_json.json()["outputs"]] == ["logits"]  # the model's outputs only
    json_logits = np.array(as_json.json()["outputs"][0]["data"]).reshape(3, 10)
    assert as_binary.status_code == 200, as_binary.text
    n = int(as_binary.headers["inference-header-content-length"])
    meta = orjson.loads(as_binary.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4
    binary_logits = np.frombuffer(as_binary.content[n:], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(binary_logits, json_logits, rtol=1e-6)


async def test_v2_text_padding_does_not_change_logits() -> None:
    def body(ids: list[int], width: int) -> dict:
        padded = ids + [0] * (width - len(ids))
        return {"inputs": [{"name": "token_ids", "shape": [1, width], "datatype": "INT64", "data": padded},
                           {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [len(ids)]}]}

    async with serving() as client:
        short = await client.post("/v2/models/sst2-lstm/infer", json=body([5, 9, 2], 3))
        long = await client.post("/v2/models/sst2-lstm/infer", json=body([5, 9, 2], 12))
    np.testing.assert_allclose(short.json()["outputs"][0]["data"], long.json()["outputs"][0]["data"], atol=1e-5)


async def test_metrics_and_stats_count_requests_and_batches() -> None:
    async with serving() as client:
        for _ in range(3):
            assert (await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["good"]})).status_code == 200
        assert (await client.post("/v1/models/sst2-lstm:predict", json={"instances": []})).status_code == 400
        metrics = (await client.get("/metrics")).text
        stats = (await client.get("/v2/models/sst2-lstm/stats")).json()["model_stats"][0]
        everything = (await client.get("/v2/models/stats")).json()["model_stats"]
    assert 'ortserve_requests_total{endpoint="v1_predict",model="sst2-lstm",status="200"} 3.0' in metrics
    assert 'ortserve_requests_total{endpoint="v1_predict",model="sst2-lstm",status="400"} 1.0' in metrics
    assert 'ortserve_batch_size_count{model="sst2-lstm"}' in metrics
    assert "ortserve_queue_depth" in metrics
    assert "process_cpu_seconds_total" in metrics
    assert stats["inference_count"] == 3
    assert stats["inference_stats"]["success"]["count"] == 3
    assert {s["name"] for s in everything} == {"fashion-cnn", "sst2-lstm"}


async def test_request_id_is_echoed_or_made() -> None:
    async with serving() as client:
        given = await client.get("/v2/health/live", headers={"X-Request-ID": "abc-123"})
        made = [(await client.get("/v2/health/live")).headers["x-request-id"] for _ in range(2)]
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made[0]) == 24
    assert made[0] != made[1]


async def test_openapi_documents_every_endpoint() -> None:
    async with serving() as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert docs.status_code == 200
    paths = spec["paths"]
    for path in ("/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v2/health/ready", "/metrics",
                 "/v2/models/{name}/config", "/v2/models/{name}/stats"):
        assert path in paths, path
    assert "InferenceRequest" in spec["components"]["schemas"]
    for path in ("/v2/repository/index", "/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload"):
        for requirement in paths[path]["post"]["security"]:
            assert set(requirement) <= set(spec["components"]["securitySchemes"]), path
    assert "examples" in paths["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]


BAD_V2 = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"inputs": "x"}', 422, "inputs"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "INT64", "data": [0]}]}', 400,
     "datatype FP32"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": [0]}]}', 400,
     "must have shape"),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0]}]}', 400,
     "takes inputs"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [1, 2]}]}', 400,
     "needs 784 values"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["a"]}]}', 400,
     "not a list of FP32"),
    (b'{"inputs": [{"name": "pixels", "shape": [0, 1, 28, 28], "datatype": "FP32", "data": []}]}', 400,
     "empty"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32"}]}', 400, "no 'data'"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_V2)
async def test_v2_bad_requests_say_what_is_wrong(body: bytes, status: int, message: str) -> None:
    async with serving() as client:
        response = await client.post("/v2/models/fashion-cnn/infer", content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(("where", "value"), [("output", "false"), ("output", 0), ("request", "no"), ("request", 1)])
async def test_binary_flags_are_true_or_false(where: str, value: Any) -> None:
    """`"binary_data": "false"` read as Python reads truth would answer binary tensors."""
    body = v2_pixels(sample_images(1))
    if where == "output":
        body["outputs"] = [{"name": "logits", "parameters": {"binary_data": value}}]
        what = "output 'logits': parameters.binary_data"
    else:
        body["parameters"] = {"binary_data_output": value}
        what = "parameters.binary_data_output"
    async with serving() as client:
        refused = await client.post("/v2/models/fashion-cnn/infer", json=body)
        body["outputs"] = [{"name": "logits", "parameters": {"binary_data": False}}]
        body["parameters"] = {"binary_data_output": False}
        as_json = await client.post("/v2/models/fashion-cnn/infer", json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == f"{what} must be true or false, got {value!r}"
    assert as_json.status_code == 200
    assert len(as_json.json()["outputs"][0]["data"]) == 10


@pytest.mark.parametrize("first", ["1", True, 1.0])
async def test_a_shape_is_json_integers(first: Any) -> None:
    """Lax validation would read "1", true and 1.0 as 1."""
    body = {"inputs": [{"name": "pixels", "shape": [first, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    async with serving() as client:
        response = await client.post("/v2/models/fashion-cnn/infer", json=body)
    assert response.status_code == 422, response.text
    assert "inputs.0.shape.0: Input should be a valid integer" in response.json()["error"]


@pytest.mark.parametrize("size", [-3136, True, 3136.0, "3136"])
async def test_a_binary_data_size_that_is_no_count_of_bytes_is_a_400_that_says_so(size: Any) -> None:
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": size}}]})
    async with serving() as client:
        response = await client.post("/v2/models/fashion-cnn/infer", content=header + b"\0" * 3136,
                                     headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400, response.text
    assert f"binary_data_size must be an integer of bytes, 0 or more; got {size!r}" in response.json()["error"]


@pytest.mark.parametrize("spelled", [
    lambda n: f" {n} ", lambda n: f"+{n}", lambda n: f"{n}.0", lambda n: hex(n), lambda n: f"{n // 10}_{n % 10}",
    lambda n: "", lambda n: f"-{n}"], ids=["spaces", "plus", "decimal", "hex", "underscore", "empty", "minus"])
async def test_a_header_length_that_is_not_plain_digits_is_a_400(spelled: Callable[[int], str]) -> None:
    """int() reads all of these as a number; a count of bytes is ASCII digits only."""
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 3136}}]})
    body = header + b"\0" * 3136
    async with serving() as client:
        response = await client.post("/v2/models/fashion-cnn/infer", content=body,
                                     headers={"Inference-Header-Content-Length": spelled(len(header)).encode()})
        plain = await client.post("/v2/models/fashion-cnn/infer", content=body,
                                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length must be a count of bytes (digits)" in response.json()["error"]
    assert plain.status_code == 200, plain.text


async def test_v2_binary_errors_and_non_finite_values() -> None:
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 784 * 4}}]})
    nan = np.full(784, np.nan, dtype="<f4").tobytes()
    async with serving() as client:
        short = await client.post("/v2/models/fashion-cnn/infer", content=header + b"\0" * 10,
                                  headers={"Inference-Header-Content-Length": str(len(header))})
        too_long = await client.post("/v2/models/fashion-cnn/infer", content=header,
                                     headers={"Inference-Header-Content-Length": str(len(header) + 5)})
        extra = await client.post("/v2/models/fashion-cnn/infer", content=header + nan + b"xx",
                                  headers={"Inference-Header-Content-Length": str(len(header))})
        not_finite = await client.post("/v2/models/fashion-cnn/infer", content=header + nan,
                                       headers={"Inference-Header-Content-Length": str(len(header))})
        bad_output = await client.post("/v2/models/fashion-cnn/infer", json={
            **v2_pixels(sample_images(1)), "outputs": [{"name": "probs"}]})
        bad_lengths = await client.post("/v2/models/sst2-lstm/infer", json={"inputs": [
            {"name": "token_ids", "shape": [1, 2], "datatype": "INT64", "data": [3, 4]},
            {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [7]}]})
    assert short.status_code == 400
    assert "runs past the end" in short.json()["error"]
    assert too_long.status_code == 400
    assert "outside the body" in too_long.json()["error"]
    assert extra.status_code == 400
    assert "not claimed" in extra.json()["error"]
    assert not_finite.status_code == 400
    assert "NaN" in not_finite.json()["error"]
    assert bad_output.status_code == 400
    assert "no outputs ['probs']" in bad_output.json()["error"]
    assert bad_lengths.status_code == 400
    assert "between 1 and the padded width" in bad_lengths.json()["error"]


BAD_V1 = [
    ("fashion-cnn", b"{oops", 400, "not valid JSON"),
    ("fashion-cnn", b'{"inputs": []}', 422, '{"instances": [...]}'),
    ("fashion-cnn", b'{"instances": []}', 400, "is empty"),
    ("fashion-cnn", b'{"instances": [[1, 2, 3]]}', 400, "28x28"),
    ("fashion-cnn", b'{"instances": [{"b64": "%%%notbase64"}]}', 400, "not valid base64"),
    ("fashion-cnn", b'{"instances": [{"b64": "aGVsbG8gd29ybGQ="}]}', 400, "cannot decode image"),
    ("fashion-cnn", b'{"instances": [{"url": "x"}]}', 400, "instance 0"),
    ("fashion-cnn", orjson.dumps({"instances": [[[300] * 28] * 28]}), 400, "[0, 255]"),
    ("fashion-cnn", orjson.dumps({"instances": [[[-1] * 28] * 28]}), 400, "[0, 255]"),
    ("fashion-cnn", orjson.dumps({"instances": [[[0.5] * 27 + [255.5]] * 28]}), 400, "[0, 255]"),
    ("fashion-cnn", orjson.dumps({"instances": [[[0] * 28] * 27 + [28]]}), 400, "28x28"),
    ("fashion-cnn", orjson.dumps({"instances": [[[0] * 27 + ["x"]] * 28]}), 400, "must be numbers 0-255"),
    # What was received is named beside what was expected, never a library's message.
    ("fashion-cnn", b'{"instances": [[1, 2, 3]]}', 400, "got 3 list"),
    ("fashion-cnn", orjson.dumps({"instances": [[[0] * 28] * 27]}), 400, "got 27x28 list"),
    ("fashion-cnn", orjson.dumps({"instances": [[[[0]] * 28] * 28]}), 400, "got 28x28x1 list"),
    ("fashion-cnn", orjson.dumps({"instances": [[0] * 783]}), 400, "or one flat list of 784); got 783 list"),
    ("fashion-cnn", b'{"instances": ["shoe.png"]}', 400, "got str"),
    ("fashion-cnn", orjson.dumps({"instances": [[0] * 783 + ["x"]]}), 400, "must be numbers 0-255; got str"),
    # Pixels scaled to 0..1 would be read as a black image: refused, saying what to send.
    ("fashion-cnn", orjson.dumps({"instances": [[[0.0] * 27 + [0.8]] * 28]}), 400, "send raw pixels 0-255"),
    ("fashion-cnn", b'{"instances": [{"b64": "data:text/plain;base64,aGk="}]}', 400, "data:image/<type>;base64,"),
    ("sst2-lstm", b'{"instances": ["fine", 3]}', 400, "instance 1: expected a string"),
]


@pytest.mark.parametrize(("model", "body", "status", "message"), BAD_V1)
async def test_v1_bad_requests_say_what_is_wrong(model: str, body: bytes, status: int, message: str) -> None:
    async with serving() as client:
        response = await client.post(f"/v1/models/{model}:predict", content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


async def test_unknown_models_versions_and_routes_are_404() -> None:
    async with serving() as client:
        model = await client.post("/v1/models/nope:predict", json={"instances": ["x"]})
        version = await client.get("/v2/models/sst2-lstm/versions/9")
        v2_infer = await client.post("/v2/models/nope/infer", json={})
        route = await client.get("/v3/whatever")
    assert model.status_code == 404
    assert "unknown model 'nope'" in model.json()["error"]
    assert version.status_code == 404
    assert "no version '9'" in version.json()["error"]
    assert v2_infer.status_code == 404
    assert route.status_code == 404
    assert route.json()["error"]


async def test_unknown_model_names_do_not_become_metric_labels() -> None:
    async with serving() as client:
        for name in ("a1", "b2", "c3"):
            assert (await client.post(f"/v1/models/{name}:predict", json={"instances": ["x"]})).status_code == 404
        metrics = (await client.get("/metrics")).text
    assert 'ortserve_requests_total{endpoint="v1_predict",model="",status="404"} 3.0' in metrics
    assert 'model="a1"' not in metrics


async def test_limits_give_413_503_and_504() -> None:
    async with serving(max_body_bytes=1000) as client:
        big = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["x" * 2000]})
    async with serving(request_timeout_s=1e-6) as client:
        spent = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a"]})
    # Batches wait 300 ms for company (even when idle): a request queued with 50 ms to live expires there.
    async with serving(max_queue_delay_ms=300, max_batch_size=64, request_timeout_s=0.08, idle_dispatch=False) as client:
        asked = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a"]},
                                  headers={"Request-Timeout-Ms": "50"})
        clamped = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a"]},
                                    headers={"Request-Timeout-Ms": "60000"})
        v2 = await client.post("/v2/models/sst2-lstm/infer", json={
            "parameters": {"timeout": 30_000},  # µs, as Triton's clients send it
            "inputs": [{"name": "token_ids", "shape": [1, 1], "datatype": "INT64", "data": [5]},
                       {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1]}]})
        bad = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a"]},
                                headers={"Request-Timeout-Ms": "soon"})
        after = (await client.get("/v2/models/sst2-lstm/stats")).json()["model_stats"][0]
    assert big.status_code == 413
    assert "exceeds the limit of 1000" in big.json()["error"]
    assert spent.status_code == 504
    assert "were spent before it could be queued" in spent.json()["error"]
    assert asked.status_code == 504
    assert "did not answer within 0.05 s" in asked.json()["error"]
    assert clamped.status_code == 504
    assert "within 0.08 s" in clamped.json()["error"]  # no more than the server's own limit
    assert v2.status_code == 504
    assert "within 0.03 s" in v2.json()["error"]
    assert bad.status_code == 400
    assert "Request-Timeout-Ms header must be a positive number" in bad.json()["error"]
    assert after["inference_stats"]["fail"]["count"] == 3


async def test_full_queue_gives_503_with_retry_after_and_loses_nothing_queued() -> None:
    # Batches wait 300 ms for company (even when idle), so three single requests sit queued.
    async with serving(max_queue_size=4, retry_after_s=3, max_queue_delay_ms=300, max_batch_size=64,
                       idle_dispatch=False) as client:
        def post(n: int):  # type: ignore[no-untyped-def]
            return client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a"] * n})

        queued = [asyncio.create_task(post(1)) for _ in range(3)]
        while 'ortserve_queue_depth{model="sst2-lstm"} 3.0' not in (await client.get("/metrics")).text:
            await asyncio.sleep(0.005)
        full = await post(2)
        too_big = await post(5)
        answered = await asyncio.gather(*queued)
    assert full.status_code == 503
    assert full.headers["retry-after"] == "3"
    assert "has 3 items (48 bytes) queued (limits 4 items" in full.json()["error"]
    assert too_big.status_code == 413
    assert "queues at most 4" in too_big.json()["error"]
    assert [r.status_code for r in answered] == [200, 200, 200]


async def test_batching_off_still_answers_multi_instance_requests() -> None:
    images = sample_images(3, seed=4)
    async with serving(max_batch_size=1) as client:
        off = await client.post("/v1/models/fashion-cnn:predict", json={"instances": images.tolist()})
        stats = (await client.get("/v2/models/fashion-cnn/stats")).json()["model_stats"][0]
    assert off.status_code == 200
    assert len(off.json()["predictions"]) == 3
    assert {b["batch_size"] for b in stats["batch_stats"]} == {1}


def test_png_helper_round_trips() -> None:
    data = png_bytes(sample_images(1)[0])
    assert struct.unpack(">I", data[16:20])[0] == 28


async def test_per_item_scalars_follow_tritons_dims_1_reshape_convention() -> None:
    ids = {"name": "token_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 9, 2]}
    async with serving() as client:
        flat = await client.post("/v2/models/sst2-lstm/infer", json={"inputs": [
            ids, {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [3]}]})
        column = await client.post("/v2/models/sst2-lstm/infer", json={"inputs": [
            ids, {"name": "lengths", "shape": [1, 1], "datatype": "INT64", "data": [3]}]})
        config = (await client.get("/v2/models/sst2-lstm/config")).json()
        meta = (await client.get("/v2/models/sst2-lstm")).json()
    assert flat.json()["outputs"] == column.json()["outputs"]
    lengths = next(i for i in config["input"] if i["name"] == "lengths")
    assert lengths["dims"] == [1]
    assert lengths["reshape"] == {"shape": []}
    assert meta["inputs"][1]["shape"] == [-1, 1]


async def test_unexpected_errors_on_the_fast_path_are_a_logged_500(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from app.codecs import TextCodec

    def broken(self, instances):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    monkeypatch.setattr(TextCodec, "instances_to_inputs", broken)
    async with serving() as client:
        response = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a"]})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}
    assert 'endpoint="v1_predict",model="sst2-lstm",status="500"' in metrics


async def test_chunked_bodies_are_read_and_limited() -> None:
    async def chunks(n: int):  # type: ignore[no-untyped-def]
        yield b'{"instances": ["'
        for _ in range(n):
            yield b"good "
        yield b'"]}'

    async with serving(max_body_bytes=2000) as client:
        ok = await client.post("/v1/models/sst2-lstm:predict", content=chunks(10))
        too_big = await client.post("/v1/models/sst2-lstm:predict", content=chunks(1000))
    assert ok.status_code == 200
    assert too_big.status_code == 413


async def test_both_committed_versions_are_served_under_the_all_policy_and_the_newest_by_default() -> None:
    versions = sorted((p.name for p in version_folders(MODELS / "sst2-lstm")), key=int)
    assert len(versions) >= 2  # the previous version stays beside the new one
    body = {"instances": ["a gripping, beautifully acted film"]}
    async with serving(version_policy="all") as client:
        meta = (await client.get("/v2/models/sst2-lstm")).json()
        assert meta["versions"] == versions
        for version in versions:
            response = await client.get(f"/v2/models/sst2-lstm/versions/{version}/ready")
            assert response.status_code == 200, version
        default = await client.post("/v1/models/sst2-lstm:predict", json=body)
        assert default.json()["model_version"] == versions[-1]
    async with serving() as client:  # latest:1
        assert (await client.get("/v2/models/sst2-lstm")).json()["versions"] == [versions[-1]]
