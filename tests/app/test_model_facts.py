"""What a model folder may say beside its ONNX file, and what the server does with it: a
config.json of a few fields (labels, a task, batching, a version policy), Triton's
config.pbtxt (honoured, with the fields it ignores named and the ones it cannot serve
refused), and a load request's configuration override."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from app.model_facts import FactsError, from_triton_json, from_triton_text
from tests.app.conftest import serving
from tests.app.onnx_models import (
    conv,
    embedding,
    lstm,
    mlp,
    mlp_with_softmax,
    pooled,
    reference,
    save,
    squared,
)

TOKEN = "facts-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LABELS = ["cat", "dog", "owl"]


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def v2(name: str, array: np.ndarray, datatype: str = "FP32", **request: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}], **request}


def config_json(folder: Path, **facts: Any) -> None:
    (folder / "config.json").write_text(json.dumps(facts))


async def test_labels_in_config_json_answer_tritons_classification_extension(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", mlp())
    config_json(path.parent.parent, labels=LABELS, description="three animals")
    x = features(2)
    scores = reference(path, {"features": x})["scores"]
    ask = [{"name": "scores", "parameters": {"classification": 2}}]
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/mlp/infer", json=v2("features", x, outputs=ask))
        too_many = await client.post("/v2/models/mlp/infer", json=v2("features", x, outputs=[
            {"name": "scores", "parameters": {"classification": 4}}]))
        metadata = (await client.get("/v2/models/mlp")).json()
        config = (await client.get("/v2/models/mlp/config")).json()
    assert answer.status_code == 200, answer.text
    (out,) = answer.json()["outputs"]
    assert (out["datatype"], out["shape"]) == ("BYTES", [2, 2])
    for row, strings in zip(scores, np.array(out["data"]).reshape(2, 2), strict=True):
        best = np.argsort(-row)[:2]
        assert list(strings) == [f"{row[i]:f}:{i}:{LABELS[i]}" for i in best]
    assert too_many.status_code == 400
    assert "more than its 3 classes" in too_many.json()["error"]
    assert metadata["parameters"]["labels"] == LABELS
    parameters = config["parameters"]
    assert parameters["labels"]["string_value"] == "cat,dog,owl"
    assert parameters["configuration"]["string_value"].endswith("mlp/config.json")


async def test_batching_in_config_json_overrides_the_measurement(tmp_path: Path) -> None:
    config_json(save(tmp_path, "given", mlp()).parent.parent, batching={"max_batch_size": 4})
    config_json(save(tmp_path, "none", mlp()).parent, batching={"max_batch_size": 0}, description="one at a time")
    async with serving(model_dir=tmp_path) as client:
        given = (await client.get("/v2/models/given/config")).json()
        none = (await client.get("/v2/models/none/config")).json()
        answer = await client.post("/v2/models/none/infer", json=v2("features", features(3)))
    assert given["max_batch_size"] == 4
    assert "['max_batch_size'] given by" in given["parameters"]["batching"]["string_value"]
    assert none["max_batch_size"] == 0
    assert none["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert none["parameters"]["description"]["string_value"] == "one at a time"
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [3, 3]


async def test_a_task_in_config_json_makes_the_v1_endpoint_and_its_preprocessing_apply(tmp_path: Path) -> None:
    path = save(tmp_path, "shapes", conv())
    config_json(path.parent, task="image-classification", labels=["dark", "light"],
                preprocessing={"kind": "image", "height": 8, "width": 8, "scale": 1 / 255, "mean": 0.0, "std": 1.0})
    image = np.random.default_rng(1).integers(0, 256, (8, 8))
    image[0, :] = image[-1, :] = image[:, 0] = image[:, -1] = 0  # a dark border, as the model was trained on
    want = reference(path, {"pixels": (image / 255).astype(np.float32).reshape(1, 1, 8, 8)})["scores"][0]
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v1/models/shapes:predict", json={"instances": [image.tolist()]})
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["label"] == ["dark", "light"][int(np.argmax(want))]
    e = np.exp(want - want.max())
    np.testing.assert_allclose(prediction["probabilities"], e / e.sum(), atol=1e-5)


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


async def test_an_rgb_model_takes_raw_pixels_and_pngs_normalized_per_channel(tmp_path: Path) -> None:
    """A colour classifier as torchvision's are: RGB, ImageNet's mean and std per channel.
    Raw pixels go as an image is laid out (rows of [r, g, b]) or flat; a PNG of the same
    pixels answers the same; greyscale is repeated in each channel; once, raw colour
    pixels were refused ("expected 8x8 pixel values; got 8x8x3 list")."""
    import base64
    import io

    from PIL import Image

    path = save(tmp_path, "colours", conv(channels=3))
    config_json(path.parent, task="image-classification", labels=["cool", "warm"],
                preprocessing={"kind": "image", "height": 8, "width": 8, "channels": 3, "scale": 1 / 255, **IMAGENET})
    rgb = np.random.default_rng(3).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    grey = rgb[:, :, 0]
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")

    def expected(hwc: np.ndarray) -> np.ndarray:
        x = (hwc / 255 - np.array(IMAGENET["mean"])) / np.array(IMAGENET["std"])
        return _softmax(reference(path, {"pixels": x.transpose(2, 0, 1)[None].astype(np.float32)})["scores"][0])

    async with serving(model_dir=tmp_path) as client:
        answers = [await client.post("/v1/models/colours:predict", json={"instances": [instance]}) for instance in (
            rgb.tolist(), rgb.ravel().tolist(), {"b64": base64.b64encode(png.getvalue()).decode()}, grey.tolist())]
        channels_first = await client.post("/v1/models/colours:predict", json={"instances": [rgb.transpose(2, 0, 1).tolist()]})
        described = (await client.get("/v1/models/colours")).json()["instance"]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    for answer in answers[:3]:
        np.testing.assert_allclose(answer.json()["predictions"][0]["probabilities"], expected(rgb), atol=1e-5)
    np.testing.assert_allclose(answers[3].json()["predictions"][0]["probabilities"],
                               expected(np.repeat(grey[:, :, None], 3, axis=2)), atol=1e-5)
    assert channels_first.status_code == 400
    assert "rows of [r, g, b] pixels, 8x8x3" in channels_first.json()["error"]
    assert "got 3x8x8 list" in channels_first.json()["error"]
    assert described.startswith("a 8x8 RGB image")


@pytest.mark.parametrize(("preprocessing", "why"), [
    ({"channels": 3, "mean": [0.5, 0.5], "std": 0.5}, "mean has 2 values for 3 channel(s)"),
    ({"channels": 1, "mean": 0.5, "std": [0.5, 0.5, 0.5]}, "std has 3 values for 1 channel(s)"),
    ({"channels": 3, "mean": 0.5, "std": [0.5, 0.0, 0.5]}, "std must be positive"),
])
async def test_per_channel_values_that_do_not_fit_the_channels_are_refused_with_why(
        tmp_path: Path, preprocessing: dict[str, Any], why: str) -> None:
    path = save(tmp_path, "colours", conv(channels=preprocessing["channels"]))
    config_json(path.parent, task="image-classification", labels=["cool", "warm"],
                preprocessing={"kind": "image", "height": 8, "width": 8, "scale": 1 / 255, **preprocessing})
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        (entry,) = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    assert entry["state"] == "UNAVAILABLE"
    assert why in entry["reason"]


async def test_a_greyscale_model_on_any_background_inverts_no_image(tmp_path: Path) -> None:
    """background "dark" (the default) inverts a light-bordered image, as Fashion-MNIST's
    model needs; "any" leaves every image as sent (a model trained on both kinds)."""
    image = np.full((8, 8), 230)
    image[3:5, 3:5] = 20  # a dark object on white
    want = {}
    for background in ("dark", "any"):
        path = save(tmp_path / background, "shapes", conv())
        config_json(path.parent, task="image-classification", labels=["dark", "light"],
                    preprocessing={"kind": "image", "height": 8, "width": 8, "scale": 1 / 255, "mean": 0.0, "std": 1.0,
                                   "background": background})
        fed = 255 - image if background == "dark" else image
        want[background] = _softmax(reference(path, {"pixels": (fed / 255).astype(np.float32).reshape(1, 1, 8, 8)})
                                    ["scores"][0])
        async with serving(model_dir=tmp_path / background) as client:
            answer = await client.post("/v1/models/shapes:predict", json={"instances": [image.tolist()]})
            described = (await client.get("/v1/models/shapes")).json()["instance"]
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"][0]["probabilities"], want[background], atol=1e-5)
        assert described.endswith("none is inverted") == (background == "any")
    assert not np.allclose(want["dark"], want["any"])  # the two answers differ: the inversion is seen


async def test_probabilities_are_not_softmaxed_again(tmp_path: Path) -> None:
    """A graph that ends in a Softmax is seen to give probabilities (completed from the
    graph, where config.json does not say); the logits of the MLP are not."""
    path = save(tmp_path, "animals", mlp_with_softmax())
    config_json(path.parent, labels=LABELS)
    config_json(save(tmp_path, "mlp", mlp()).parent, labels=LABELS)
    async with serving(model_dir=tmp_path) as client:
        animals = (await client.get("/v2/models/animals/config")).json()
        plain = (await client.get("/v2/models/mlp/config")).json()
    assert animals["parameters"]["scores"]["string_value"] == "probabilities"
    assert plain["parameters"]["scores"]["string_value"] == "logits"


async def test_a_wrong_task_for_the_graph_is_unavailable_with_why(tmp_path: Path) -> None:
    """The 4-feature MLP declared a 1x4 "image": refused at load, not a 500 per request."""
    path = save(tmp_path, "mlp", mlp())
    config_json(path.parent, task="image-classification", labels=LABELS,
                preprocessing={"kind": "image", "height": 1, "width": 4, "scale": 1.0, "mean": 0.0, "std": 1.0})
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        index = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    (entry,) = index
    assert entry["state"] == "UNAVAILABLE"
    assert "image" in entry["reason"]


PBTXT = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 4, 8 ] preserve_ordering: true }
instance_group [ { count: 2 kind: KIND_CPU } ]
version_policy: { all { } }
default_model_filename: "mlp.onnx"
model_transaction_policy { decoupled: false }
"""


def triton_repository(root: Path) -> Path:
    """Two models as Triton lays them out: config.pbtxt beside the version folders."""
    save(root, "mlp", mlp(), file="mlp.onnx")
    save(root, "mlp", mlp(), version=2, file="mlp.onnx")
    (root / "mlp" / "config.pbtxt").write_text(PBTXT)
    (root / "mlp" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    save(root, "lookup", embedding())
    (root / "lookup" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
        'output [ { name: "vectors" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]\n')
    return root


async def test_a_triton_model_repository_is_served_as_it_is(tmp_path: Path) -> None:
    root = triton_repository(tmp_path)
    async with serving(model_dir=root) as client:
        mlp_config = (await client.get("/v2/models/mlp/config")).json()
        versions = (await client.get("/v2/models/mlp")).json()["versions"]
        lookup_config = (await client.get("/v2/models/lookup/config")).json()
        looked_up = await client.post("/v2/models/lookup/infer", json=v2("ids", np.array([3, 1]), "INT64"))
    assert mlp_config["max_batch_size"] == 8  # the largest preferred size, within max_batch_size
    assert mlp_config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert mlp_config["version_policy"] == {"all": {}}
    assert versions == ["1", "2"]
    parameters = {k: v["string_value"] for k, v in mlp_config["parameters"].items()}
    assert parameters["labels"] == "cat,dog,owl"
    assert mlp_config["instance_group"][0]["count"] == 2  # honoured: two batches at once
    assert parameters["ignored"] == "dynamic_batching.preserve_ordering: answers always go to their own requests"
    assert parameters["batching"].endswith("config.pbtxt")
    assert lookup_config["max_batch_size"] == 0
    assert lookup_config["input"] == [{"name": "ids", "data_type": "TYPE_INT64", "dims": [-1]}]
    assert looked_up.status_code == 200, looked_up.text
    assert looked_up.json()["outputs"][0]["shape"] == [2, 2]


@pytest.mark.parametrize(("text", "why"), [
    ('platform: "tensorrt_plan"', "only ONNX models are served"),
    ('backend: "python"', "only ONNX models are served"),
    ('max_batch_size: 4 batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 } ]',
     "['batch_input'] are not supported"),
    ("model_transaction_policy { decoupled: true }", "a decoupled model (any number of answers per request) is "
     "not served"),
    # ONNX Runtime options (tests/app/test_model_runtime_options.py) that Triton would not take either
    ("optimization { graph { level: 3 } }", "optimization.graph.level 3: it must be -1 (basic), 0 (all)"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "two" } }',
     "parameters 'intra_op_thread_count' is 'two': it must be a whole number of threads"),
    ('parameters { key: "inter_op_thread_count" value: { string_value: "-1" } }',
     "parameters 'inter_op_thread_count' is '-1'"),
    ('parameters { key: "execution_mode" value: { string_value: "2" } }',
     "parameters 'execution_mode' is '2': it must be 0 (sequential) or 1 (parallel)"),
    ('parameters { key: "enable_mem_arena" value: { string_value: "maybe" } }',
     "parameters 'enable_mem_arena' is 'maybe': it must be 1, 0, true or false"),
    ('name: "other"', "names model 'other' but lies in folder 'mlp'"),
    ('max_batch_size: 4 input [ { name: "features" data_type: TYPE_FP32 dims: [ 5 ] } ]',
     "axis 1 is 4 in the graph, 5 in the manifest"),
    ('max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]', "'x' is not in the graph"),
    ("max_batch_size: 4 bogus_field: 1", "not a Triton model configuration"),
    ("max_batch_size: -3 dynamic_batching { }", "max_batch_size -3: it must be 0 (no batch axis) or more"),
    ('max_batch_size: 4 input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 1 ] } } ]',
     "dims [4] hold 4 values, reshape [2, 1] 2"),
    ('max_batch_size: 4 input [ { name: "features" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ 4 ] } } ]',
     "dims [-1] hold any number of values, reshape [4] a fixed 4"),
    ('max_batch_size: 4 input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ -1, -1 ] } } ]',
     "more than one -1"),
    ('max_batch_size: 4 input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } } ]',
     "'features' has rank 2 in the graph (['batch', 4]), 3 in the manifest's reshape ([-1, 2, 2])"),
])
async def test_what_a_triton_configuration_asks_that_cannot_be_served_is_refused_with_why(
        tmp_path: Path, text: str, why: str) -> None:
    save(tmp_path, "mlp", mlp())
    (tmp_path / "mlp" / "config.pbtxt").write_text(text)
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        index = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    (entry,) = index
    assert entry["state"] == "UNAVAILABLE"
    assert why in entry["reason"]


async def test_a_scalar_models_configuration_read_back_as_its_config_pbtxt_serves_it(tmp_path: Path) -> None:
    """What /config says of a scalar (dims [1] reshaped to [], as Triton writes one) is a
    configuration Triton's repository layout may carry: it declares the same model."""
    save(tmp_path, "squared", squared())
    async with serving(model_dir=tmp_path) as client:
        config = (await client.get("/v2/models/squared/config")).json()
    assert config["input"] == [{"name": "t", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}]
    declared = {k: config[k] for k in ("platform", "max_batch_size", "input", "output")}
    (tmp_path / "squared" / "config.pbtxt").write_text(text_format.MessageToString(json_format.Parse(
        json.dumps(declared), model_config_pb2.ModelConfig())))
    async with serving(model_dir=tmp_path) as client:
        again = (await client.get("/v2/models/squared/config")).json()
        answer = await client.post("/v2/models/squared/infer", json=v2("t", np.array(3.0, np.float32), "FP32"))
    assert again["parameters"]["configuration"]["string_value"].endswith("config.pbtxt")
    assert again["input"] == config["input"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [9.0]


QUICKSTART = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [ { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 8, 8 ]
          reshape { shape: [ 1, 3, 8, 8 ] } } ]
output [ { name: "fc6_1" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 1, 4, 1, 1 ] }
           label_filename: "densenet_labels.txt" } ]
"""
"""Triton's quickstart model (docs/examples/model_repository/densenet_onnx), 8x8 pixels and
4 classes: clients send an image [3, 8, 8] and get its 4 scores; the graph takes [1, 3, 8, 8]
and gives [1, 4, 1, 1]."""


async def test_tritons_quickstart_repository_serves_with_its_reshapes(tmp_path: Path) -> None:
    path = save(tmp_path, "densenet_onnx", pooled(1))
    (tmp_path / "densenet_onnx" / "config.pbtxt").write_text(QUICKSTART)
    (tmp_path / "densenet_onnx" / "densenet_labels.txt").write_text("\n".join(["a", "b", "c", "d"]) + "\n")
    image = np.random.default_rng(3).standard_normal((3, 8, 8)).astype(np.float32)
    scores = reference(path, {"data_0": image[np.newaxis]})["fc6_1"].reshape(4)
    top = [f"{label}" for label in np.array(["a", "b", "c", "d"])[np.argsort(-scores)[:2]]]
    async with serving(model_dir=tmp_path) as client:
        metadata = (await client.get("/v2/models/densenet_onnx")).json()
        config = (await client.get("/v2/models/densenet_onnx/config")).json()
        answer = await client.post("/v2/models/densenet_onnx/infer", json=v2("data_0", image))
        classified = await client.post("/v2/models/densenet_onnx/infer", json=v2("data_0", image, outputs=[
            {"name": "fc6_1", "parameters": {"classification": 2}}]))
        graph_shaped = await client.post("/v2/models/densenet_onnx/infer", json=v2("data_0", image[np.newaxis]))
    assert metadata["inputs"] == [{"name": "data_0", "datatype": "FP32", "shape": [3, 8, 8]}]
    assert metadata["outputs"] == [{"name": "fc6_1", "datatype": "FP32", "shape": [4]}]
    assert config["input"][0]["reshape"] == {"shape": [1, 3, 8, 8]}
    assert config["output"][0]["reshape"] == {"shape": [1, 4, 1, 1]}
    assert answer.status_code == 200, answer.text
    (out,) = answer.json()["outputs"]
    assert out["shape"] == [4]
    np.testing.assert_allclose(out["data"], scores, rtol=1e-6, atol=1e-6)
    assert [s.split(":")[2] for s in classified.json()["outputs"][0]["data"]] == top
    assert graph_shaped.status_code == 400  # clients send the configuration's dims, as to Triton
    assert "must have shape [3, 8, 8]" in graph_shaped.json()["error"]

    # /config read back as the model's config.pbtxt declares the same model
    declared = {k: config[k] for k in ("platform", "max_batch_size", "input", "output")}
    (tmp_path / "densenet_onnx" / "config.pbtxt").write_text(text_format.MessageToString(json_format.Parse(
        json.dumps(declared), model_config_pb2.ModelConfig())))
    async with serving(model_dir=tmp_path) as client:
        again = (await client.get("/v2/models/densenet_onnx/config")).json()
        answered = await client.post("/v2/models/densenet_onnx/infer", json=v2("data_0", image))
    assert (again["input"], again["output"]) == (config["input"], config["output"])
    assert answered.json()["outputs"][0]["data"] == out["data"]


async def test_a_batching_models_reshaped_output_answers_each_request_its_rows(tmp_path: Path) -> None:
    path = save(tmp_path, "pooled", pooled())
    (tmp_path / "pooled" / "config.pbtxt").write_text(
        'max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 20000 }\n'
        'input [ { name: "data_0" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]\n'
        'output [ { name: "fc6_1" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 4, 1, 1 ] } } ]\n')
    images = [np.random.default_rng(seed).standard_normal((rows, 3, 8, 8)).astype(np.float32)
              for seed, rows in enumerate([1, 3, 2])]
    async with serving(model_dir=tmp_path) as client:
        answers = await asyncio.gather(*(client.post("/v2/models/pooled/infer", json=v2("data_0", x)) for x in images))
        stats = (await client.get("/v2/models/pooled/stats")).json()["model_stats"][0]
    assert stats["execution_count"] < 3  # batched together: the 20 ms wait gathered them
    for x, answer in zip(images, answers, strict=True):
        assert answer.status_code == 200, answer.text
        (out,) = answer.json()["outputs"]
        assert out["shape"] == [len(x), 4]
        want = reference(path, {"data_0": x})["fc6_1"].reshape(len(x), 4)
        np.testing.assert_allclose(np.array(out["data"]).reshape(len(x), 4), want, rtol=1e-5, atol=1e-6)


async def test_a_reshape_with_a_dynamic_axis_refuses_an_item_that_does_not_fit(tmp_path: Path) -> None:
    """Steps of 3 features sent flat: dims [-1] reshaped to the graph's [-1, 3]. A request
    whose values are no whole number of steps is that request's 400."""
    path = save(tmp_path, "lstm", lstm())
    (tmp_path / "lstm" / "config.pbtxt").write_text(
        'max_batch_size: 4\n'
        'input [ { name: "steps" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 3 ] } } ]\n'
        'output [ { name: "last" data_type: TYPE_FP32 dims: [ 1, 5 ] } ]\n')
    flat = np.random.default_rng(5).standard_normal((2, 6)).astype(np.float32)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/lstm/infer", json=v2("steps", flat))
        ragged = await client.post("/v2/models/lstm/infer", json=v2("steps", flat[:, :5]))
        still = await client.post("/v2/models/lstm/infer", json=v2("steps", flat))
    assert answer.status_code == 200, answer.text
    want = reference(path, {"steps": flat.reshape(2, 2, 3)})["last"]
    np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(2, 1, 5), want, rtol=1e-5,
                               atol=1e-6)
    assert ragged.status_code == 400
    assert "does not make the graph's shape [-1, 3]: 5 values" in ragged.json()["error"]
    assert still.status_code == 200  # the model was not at fault


def test_the_triton_text_is_read_with_tritons_own_schema() -> None:
    facts = from_triton_text(PBTXT.replace(' label_filename: "labels.txt"', ""), "mlp", "mlp/config.pbtxt")
    assert facts.batching is not None
    assert (facts.batching.max_batch_size, facts.batching.max_queue_delay_ms) == (8, 0.5)
    assert facts.model_file == "mlp.onnx"
    assert [t.shape for t in facts.inputs or []] == [[-1, 4]]
    with pytest.raises(FactsError, match="model_metrics"):  # an override is applied whole or refused
        from_triton_json('{"model_metrics": {"metric_control": []}}', "mlp", "parameters.config")


async def test_a_load_with_a_configuration_applies_it_for_that_load(tmp_path: Path) -> None:
    save(tmp_path, "mlp", mlp())
    config_json(tmp_path / "mlp", batching={"max_batch_size": 2, "max_queue_delay_ms": 1.0})  # not measured: fixed
    override = json.dumps({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 1000}})
    async with serving(model_dir=tmp_path, admin_token=TOKEN, model_control_mode="explicit",
                       load_model=["mlp"]) as client:
        before = (await client.get("/v2/models/mlp/config")).json()
        loaded = await client.post("/v2/repository/models/mlp/load", headers=ADMIN,
                                   json={"parameters": {"config": override}})
        during = (await client.get("/v2/models/mlp/config")).json()
        refused = await client.post("/v2/repository/models/mlp/load", headers=ADMIN,
                                    json={"parameters": {"config": '{"runtime": "libtriton_onnxruntime.so"}'}})
        not_json = await client.post("/v2/repository/models/mlp/load", headers=ADMIN,
                                     json={"parameters": {"config": "{max_batch_size: 4"}})
        plain = await client.post("/v2/repository/models/mlp/load", headers=ADMIN)
        after = (await client.get("/v2/models/mlp/config")).json()
        policy_only = await client.post("/v2/repository/models/mlp/load", headers=ADMIN,
                                        json={"parameters": {"config": '{"version_policy": {"all": {}}}'}})
        only_policy = (await client.get("/v2/models/mlp/config")).json()
    assert loaded.status_code == 200, loaded.text
    assert during["max_batch_size"] == 4
    assert during["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    assert refused.status_code == 400
    assert "['runtime'] are not supported in a load's configuration" in refused.json()["error"]
    assert not_json.status_code == 400
    assert "not a Triton model configuration" in not_json.json()["error"]
    assert plain.status_code == 200
    assert before["max_batch_size"] == after["max_batch_size"] == 2  # the next load reads the folder again
    assert policy_only.status_code == 200, policy_only.text
    assert only_policy["version_policy"] == {"all": {}}
    assert only_policy["max_batch_size"] == 2  # the override gives no batching: the folder's holds


async def test_a_value_the_model_refuses_is_that_requests_400_and_never_opens_the_breaker(tmp_path: Path) -> None:
    """An id outside the embedding's table passes every declared check; ONNX Runtime refuses
    it. The request gets a 400; requests batched with it get their answers; and however
    often it happens the model stays healthy."""
    import asyncio

    path = save(tmp_path, "lookup", embedding())
    good = np.array([1, 2], np.int64)
    want = reference(path, {"ids": good})["vectors"]
    async with serving(model_dir=tmp_path, failure_threshold=2, max_queue_delay_ms=20.0,
                       idle_dispatch=False) as client:
        answers = await asyncio.gather(*(client.post("/v2/models/lookup/infer", json=v2(
            "ids", ids, "INT64")) for ids in [good, np.array([99], np.int64)] * 4))
        after = await client.post("/v2/models/lookup/infer", json=v2("ids", good, "INT64"))
        ready = await client.get("/v2/models/lookup/ready")
        stats = (await client.get("/v2/models/lookup/stats")).json()
    for answer in answers[0::2]:
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(2, 2), want, rtol=1e-6)
    for answer in answers[1::2]:
        assert answer.status_code == 400
        assert "indices element out of data bounds" in answer.json()["error"]
    assert after.status_code == 200
    assert ready.status_code == 200
    assert stats["model_stats"][0]["batch_stats"]  # they ran in batches, with each other


async def test_the_index_stops_listing_a_deleted_version_at_once(tmp_path: Path) -> None:
    import shutil

    save(tmp_path, "mlp", mlp())
    save(tmp_path, "mlp", mlp(), version=2)
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"kind": "latest"}}))
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        before = (await client.post("/v2/repository/index", headers=ADMIN)).json()
        shutil.rmtree(tmp_path / "mlp" / "1")
        after = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    assert [(e["version"], e["state"]) for e in before] == [("1", "UNAVAILABLE"), ("2", "READY")]
    assert [(e["version"], e["state"]) for e in after] == [("2", "READY")]
