"""Drop-in models: a folder with just model.onnx is served through V2, its configuration
completed from the graph, its first axis checked to be a batch axis. The models are made
here with onnx.helper; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.app.conftest import serving

TOKEN = "drop-in-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def save(model_dir: Path, name: str, graph: onnx.GraphProto) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    folder = model_dir / name / "1"
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def mlp(first_axis: int | str = "batch") -> onnx.GraphProto:
    """4 features -> 3 scores: the seeds' multilayer perceptron, one layer deep."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    return helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["scores"])],
        "mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [first_axis, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [first_axis, 3])], [weights, bias])


def two_in_two_out() -> onnx.GraphProto:
    """INT64 ids and a BOOL mask in; the masked ids (INT64) and each row's count (INT64) out."""
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return helper.make_graph(
        [helper.make_node("Where", ["mask", "ids", "zero"], ["masked"]),
         helper.make_node("Cast", ["mask"], ["ones"], to=TensorProto.INT64),
         helper.make_node("ReduceSum", ["ones", "axes"], ["count"], keepdims=0)],
        "masking", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 5]),
                    helper.make_tensor_value_info("mask", TensorProto.BOOL, ["n", 5])],
        [helper.make_tensor_value_info("masked", TensorProto.INT64, ["n", 5]),
         helper.make_tensor_value_info("count", TensorProto.INT64, ["n"])], [zero, axes])


def centred_over_the_batch() -> onnx.GraphProto:
    """x minus its mean over the first axis: dynamic first axis, but not a batch axis."""
    return helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
         helper.make_node("Sub", ["x", "mean"], ["y"])],
        "centred", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])


@pytest.fixture
def drop_ins(model_root: Path) -> Path:
    """The shipped models beside drop-ins: two servable, two not (with why)."""
    save(model_root, "mlp", mlp())
    save(model_root, "masking", two_in_two_out())
    save(model_root, "fixed-batch", mlp(first_axis=1))
    save(model_root, "centred", centred_over_the_batch())
    return model_root


def v2(inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> dict[str, Any]:
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": datatypes[k], "data": v.ravel().tolist()}
                       for k, v in inputs.items()]}


def reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


async def test_a_drop_in_mlp_answers_what_onnx_runtime_answers(drop_ins: Path) -> None:
    features = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    want = reference(drop_ins / "mlp" / "1" / "model.onnx", {"features": features})["scores"]
    async with serving(model_dir=drop_ins, admin_token=TOKEN) as client:
        answer = await client.post("/v2/models/mlp/infer", json=v2({"features": features}, {"features": "FP32"}))
        metadata = (await client.get("/v2/models/mlp")).json()
        config = (await client.get("/v2/models/mlp/config")).json()
    assert answer.status_code == 200, answer.text
    (out,) = answer.json()["outputs"]
    assert out["name"] == "scores"
    assert out["shape"] == [5, 3]
    np.testing.assert_allclose(np.array(out["data"]).reshape(5, 3), want, rtol=1e-6, atol=1e-6)
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["output"] == [{"name": "scores", "data_type": "TYPE_FP32", "dims": [3]}]


async def test_int64_and_bool_tensors_in_and_two_outputs_out(drop_ins: Path) -> None:
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 100, (3, 5)).astype(np.int64)
    mask = rng.integers(0, 2, (3, 5)).astype(bool)
    want = reference(drop_ins / "masking" / "1" / "model.onnx", {"ids": ids, "mask": mask})
    async with serving(model_dir=drop_ins) as client:
        answer = await client.post("/v2/models/masking/infer",
                                   json=v2({"ids": ids, "mask": mask}, {"ids": "INT64", "mask": "BOOL"}))
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["masked"]["datatype"] == outputs["count"]["datatype"] == "INT64"
    np.testing.assert_array_equal(np.array(outputs["masked"]["data"]).reshape(3, 5), want["masked"])
    np.testing.assert_array_equal(outputs["count"]["data"], want["count"])


async def test_models_that_do_not_batch_are_unavailable_with_why_and_the_others_serve(drop_ins: Path) -> None:
    async with serving(model_dir=drop_ins, admin_token=TOKEN) as client:
        index = (await client.post("/v2/repository/index", headers=ADMIN)).json()
        fixed = await client.post("/v2/models/fixed-batch/infer", json={"inputs": []})
        served = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a fine film"]})
    entries = {e["name"]: e for e in index}
    assert entries["mlp"]["state"] == "READY"
    assert entries["mlp"]["verified"] is False  # a drop-in has no digest to check
    assert "verified" not in entries["fashion-cnn"]
    assert entries["fixed-batch"]["state"] == "UNAVAILABLE"
    assert "fixed first axis of 1" in entries["fixed-batch"]["reason"]
    assert entries["centred"]["state"] == "UNAVAILABLE"
    assert "not a batch axis" in entries["centred"]["reason"]
    assert fixed.status_code == 503
    assert "fixed first axis" in fixed.json()["error"]
    assert served.status_code == 200


async def test_the_v1_endpoint_says_a_tensors_model_takes_v2(drop_ins: Path) -> None:
    async with serving(model_dir=drop_ins) as client:
        answer = await client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]})
        listed = (await client.get("/v1/models")).json()["models"]
    assert answer.status_code == 400
    assert "takes tensors, not instances" in answer.json()["error"]
    assert json.dumps(next(m for m in listed if m["name"] == "mlp")["preprocessing"]) == "null"


async def test_a_request_that_does_not_fit_the_graph_is_a_400(drop_ins: Path) -> None:
    wrong = {"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}]}
    async with serving(model_dir=drop_ins) as client:
        answer = await client.post("/v2/models/mlp/infer", json=wrong)
    assert answer.status_code == 400
    assert "must have shape [-1, 4]" in answer.json()["error"]


@pytest.mark.server
def test_tritonclient_with_binary_tensors_against_a_drop_in(tmp_path: Path) -> None:
    import tritonclient.http as triton

    from load_tests.server import ServerProcess

    path = save(tmp_path, "mlp", mlp())
    features = np.random.default_rng(3).standard_normal((7, 4)).astype(np.float32)
    want = reference(path, {"features": features})["scores"]
    with ServerProcess(["--model-dir", str(tmp_path)]) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        x = triton.InferInput("features", list(features.shape), "FP32")
        x.set_data_from_numpy(features, binary_data=True)
        result = client.infer("mlp", [x], outputs=[triton.InferRequestedOutput("scores", binary_data=True)])
        assert client.is_model_ready("mlp")
        assert client.get_model_config("mlp")["max_batch_size"] == 16
    np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-6, atol=1e-6)


async def test_the_servers_address_points_a_person_to_the_docs() -> None:
    async with serving() as client:
        answer = await client.get("/", follow_redirects=False)
        docs = await client.get("/", follow_redirects=True)
    assert answer.status_code == 307
    assert answer.headers["location"] == "/docs"
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def averaged_over_a_sequence() -> onnx.GraphProto:
    """x [n, length] -> the mean of each row: a dynamic axis besides the first, on which
    zero padding would change the answer."""
    return helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=0)], "averaged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "length"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["n"])])


async def test_requests_of_other_lengths_are_never_padded_together(tmp_path: Path) -> None:
    """Zero padding would change what a model that does not mask it answers: a drop-in
    with a dynamic axis besides the first runs each row alone (max_batch_size 1)."""
    import asyncio

    save(tmp_path, "averaged", averaged_over_a_sequence())
    short, long = np.ones((1, 2), np.float32), np.full((1, 5), -1.0, np.float32)
    async with serving(model_dir=tmp_path) as client:
        config = (await client.get("/v2/models/averaged/config")).json()
        answers = await asyncio.gather(*(
            client.post("/v2/models/averaged/infer", json=v2({"x": x}, {"x": "FP32"})) for x in [short, long] * 8))
    assert config["max_batch_size"] == 1
    assert [a.json()["outputs"][0]["data"] for a in answers] == [[1.0], [-1.0]] * 8
