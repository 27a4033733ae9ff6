"""Drop-in models: a folder with just model.onnx is served through V2, its configuration
completed from the graph, its first axis checked to be a batch axis. The models are made
here with onnx.helper; nothing is downloaded."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest

from app.graph import graph_tensors, inputs_it_takes
from app.loading import manifest_fingerprint
from app.manifest import Manifest
from tests.app.conftest import serving
from tests.app.onnx_models import (
    ML_OPSET,
    averaged_over_a_sequence,
    centred_over_the_batch,
    embedding,
    flattened,
    masked_mean,
    mlp,
    parsed_numbers,
    per_position,
    reference,
    save,
    shapeless_mlp,
    squared,
    top_k,
    two_in_two_out,
    widened,
    zipmapped,
)

TOKEN = "drop-in-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


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
    assert config["max_batch_size"] > 1  # measured at load: app/batch_sizing.py
    assert config["parameters"]["batching"]["string_value"].startswith("measured: cost per item at batch sizes 1:")
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


@pytest.mark.parametrize("mask", [["true"] * 5, ["false"] * 5, [1, 0, 1, 0, 1], [0.5] * 5, [True] * 4 + [1]])
async def test_bool_data_is_json_true_or_false(drop_ins: Path, mask: list[Any]) -> None:
    """numpy would read each of these as booleans ("false" as True): the client meant something
    the server cannot know, so it says what BOOL data is."""
    ids = {"name": "ids", "shape": [1, 5], "datatype": "INT64", "data": [1, 2, 3, 4, 5]}
    async with serving(model_dir=drop_ins) as client:
        answer = await client.post("/v2/models/masking/infer", json={"inputs": [
            ids, {"name": "mask", "shape": [1, 5], "datatype": "BOOL", "data": mask}]})
    assert answer.status_code == 400, answer.text
    assert "input 'mask': data is not a list of BOOL values (BOOL values go as JSON true or false)" in answer.json()["error"]


async def test_models_that_do_not_batch_run_a_request_at_a_time_with_shapes_as_declared(drop_ins: Path) -> None:
    """Triton's max_batch_size 0: a fixed first axis, or one that the check at load shows is
    not a batch axis; each request is given to the model whole, and /config says why."""
    x = np.array([[1.0, 2.0], [3.0, 5.0], [-4.0, 0.5]], np.float32)
    want = reference(drop_ins / "centred" / "1" / "model.onnx", {"x": x})["y"]
    async with serving(model_dir=drop_ins, admin_token=TOKEN) as client:
        index = (await client.post("/v2/repository/index", headers=ADMIN)).json()
        centred = await client.post("/v2/models/centred/infer", json=v2({"x": x}, {"x": "FP32"}))
        fixed = await client.post("/v2/models/fixed-batch/infer",
                                  json=v2({"features": np.ones((1, 4), np.float32)}, {"features": "FP32"}))
        two_rows = await client.post("/v2/models/fixed-batch/infer",
                                     json=v2({"features": np.ones((2, 4), np.float32)}, {"features": "FP32"}))
        configs = {name: (await client.get(f"/v2/models/{name}/config")).json() for name in ("centred", "fixed-batch")}
        metadata = (await client.get("/v2/models/fixed-batch")).json()
        served = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a fine film"]})
    entries = {e["name"]: e for e in index}
    assert entries["mlp"]["verified"] is False  # a drop-in has no digest to check
    assert "verified" not in entries["fashion-cnn"]
    assert {entries[n]["state"] for n in ("mlp", "fixed-batch", "centred")} == {"READY"}
    assert centred.status_code == 200, centred.text
    (out,) = centred.json()["outputs"]
    assert out["shape"] == [3, 2]  # the whole tensor, centred over its three rows together
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 2), want, rtol=1e-6)
    assert fixed.status_code == 200
    assert fixed.json()["outputs"][0]["shape"] == [1, 3]
    assert two_rows.status_code == 400
    assert "must have shape [1, 4]" in two_rows.json()["error"]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [1, 4]}]
    for name, why in (("centred", "differs from the two rows run alone"), ("fixed-batch", "fixed first axis of 1")):
        assert configs[name]["max_batch_size"] == 0
        assert "dynamic_batching" not in configs[name]
        assert why in configs[name]["parameters"]["batching"]["string_value"]
    assert configs["fixed-batch"]["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [1, 4]}]
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
        assert client.get_model_config("mlp")["max_batch_size"] > 1
    np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-6, atol=1e-6)


async def test_the_servers_address_points_a_person_to_the_docs() -> None:
    async with serving() as client:
        answer = await client.get("/", follow_redirects=False)
        docs = await client.get("/", follow_redirects=True)
    assert answer.status_code == 307
    assert answer.headers["location"] == "/docs"
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_requests_of_other_lengths_are_never_padded_together(tmp_path: Path) -> None:
    """Zero padding would change what a model that does not mask it answers: a drop-in
    with a dynamic axis besides the first batches a request only with requests of its
    shapes."""
    import asyncio

    save(tmp_path, "averaged", averaged_over_a_sequence())
    short, long = np.ones((1, 2), np.float32), np.full((1, 5), -1.0, np.float32)
    async with serving(model_dir=tmp_path) as client:
        config = (await client.get("/v2/models/averaged/config")).json()
        answers = await asyncio.gather(*(
            client.post("/v2/models/averaged/infer", json=v2({"x": x}, {"x": "FP32"})) for x in [short, long] * 8))
    assert config["max_batch_size"] > 1
    assert "batches only with requests of its shapes" in config["parameters"]["batching"]["string_value"]
    assert [a.json()["outputs"][0]["data"] for a in answers] == [[1.0], [-1.0]] * 8


def ids_and_mask(length: int, seed: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, 10, (1, length))
    return {"ids": ids, "mask": np.ones_like(ids)}


async def test_a_model_that_masks_its_padding_batches_requests_of_other_lengths_padded(tmp_path: Path) -> None:
    """A transformer masks its padding (attention_mask): asked to (pad: true) and checked (rows
    zero-padded to a longer one's length answer what they answer alone), requests of other
    lengths batch together."""
    path = save(tmp_path, "pooled", masked_mean())
    (tmp_path / "pooled" / "config.json").write_text(json.dumps({"batching": {"pad": True}}))
    requests = [ids_and_mask(length, seed) for seed, length in enumerate([2, 5, 3, 7, 1, 4, 6, 2] * 2)]
    want = [reference(path, inputs)["pooled"] for inputs in requests]
    async with serving(model_dir=tmp_path, idle_dispatch=False, max_queue_delay_ms=50) as client:
        config = (await client.get("/v2/models/pooled/config")).json()
        answers = await asyncio.gather(*(
            client.post("/v2/models/pooled/infer", json=v2(inputs, {"ids": "INT64", "mask": "INT64"}))
            for inputs in requests))
        stats = (await client.get("/v2/models/pooled/stats")).json()["model_stats"][0]
    assert "requests of other lengths batch together, zero-padded" in config["parameters"]["batching"]["string_value"]
    for answer, expected in zip(answers, want, strict=True):
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-5)
    assert stats["inference_count"] == len(requests)
    assert stats["execution_count"] < len(requests) / 2  # batched across lengths


async def test_padding_is_asked_for_and_refused_where_it_would_change_an_answer(tmp_path: Path) -> None:
    """Not the default, even where the model masks its padding (it may cost more than it saves,
    README); asked for, a model that does not mask it, or whose output has the padded length,
    is refused with why."""
    save(tmp_path, "not-asked", masked_mean())
    save(tmp_path, "per-position", per_position())
    save(tmp_path, "unmasked", averaged_over_a_sequence())
    for name in ("per-position", "unmasked"):
        (tmp_path / name / "config.json").write_text(json.dumps({"batching": {"pad": True}}))
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        reason = (await client.get("/v2/models/not-asked/config")).json()["parameters"]["batching"]["string_value"]
        index = {e["name"]: e for e in (await client.post("/v2/repository/index", headers=ADMIN)).json()}
    assert "batches only with requests of its shapes" in reason
    assert "pad: true in its config.json" in reason
    assert index["per-position"]["state"] == index["unmasked"]["state"] == "UNAVAILABLE"
    assert ("says pad: true, but output 'vectors' has shape [2, 2] for a row alone, [3, 2] padded"
            in index["per-position"]["reason"])
    assert "says pad: true, but output 'mean' for a row zero-padded" in index["unmasked"]["reason"]


async def test_a_loads_batching_sizes_keep_the_folders_padding(tmp_path: Path) -> None:
    """Batching facts on top of others replace only the fields they give: a load's configuration
    (Triton's, which has no word for padding) sets the sizes, the config.json's pad stays."""
    save(tmp_path, "pooled", masked_mean())
    (tmp_path / "pooled" / "config.json").write_text(json.dumps({"batching": {"pad": True}}))
    override = json.dumps({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 1000}})
    async with serving(model_dir=tmp_path, admin_token=TOKEN, model_control_mode="explicit",
                       load_model=["pooled"]) as client:
        loaded = await client.post("/v2/repository/models/pooled/load", headers=ADMIN,
                                   json={"parameters": {"config": override}})
        config = (await client.get("/v2/models/pooled/config")).json()
    assert loaded.status_code == 200, loaded.text
    assert config["max_batch_size"] == 4
    assert "requests of other lengths batch together" in config["parameters"]["batching"]["string_value"]


async def test_padding_is_not_taken_unchecked_where_the_rows_cannot_be_of_other_lengths(tmp_path: Path) -> None:
    """Warm-up samples one token long are what the check runs on: nothing can be padded, so
    nothing is shown, and pad: true is refused rather than taken on trust."""
    save(tmp_path, "pooled", masked_mean())
    (tmp_path / "pooled" / "config.pbtxt").write_text(
        'max_batch_size: 8\ndynamic_batching { }\nmodel_warmup [{ name: "one" batch_size: 2\n'
        '  inputs { key: "ids" value: { data_type: TYPE_INT64 dims: [1] zero_data: true } }\n'
        '  inputs { key: "mask" value: { data_type: TYPE_INT64 dims: [1] zero_data: true } } }]\n')
    (tmp_path / "pooled" / "config.json").write_text(json.dumps({"batching": {"pad": True}}))
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        (entry,) = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    assert entry["state"] == "UNAVAILABLE"
    assert "no row could be padded to check it with" in entry["reason"]


async def test_a_model_that_cannot_load_or_has_no_inputs_is_unavailable_and_the_others_serve(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    save(tmp_path, "mlp", mlp())
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08\x07not a graph")
    constant = helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0])
    save(tmp_path, "no-inputs", helper.make_graph(
        [helper.make_node("Constant", [], ["one"], value=constant)], "constant", [],
        [helper.make_tensor_value_info("one", TensorProto.FLOAT, [1])]))
    save(tmp_path, "zipmapped", zipmapped(), other_opsets=(ML_OPSET,))
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 4])
    save(tmp_path, "passed-through", helper.make_graph(  # an input that is an output too, as it came
        [helper.make_node("Relu", ["features"], ["scores"])], "passed", [features],
        [features, helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4])]))
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        index = {e["name"]: e for e in (await client.post("/v2/repository/index", headers=ADMIN)).json()}
        served = await client.post("/v2/models/mlp/infer",
                                   json=v2({"features": np.ones((1, 4), np.float32)}, {"features": "FP32"}))
        refused = await client.post("/v2/models/corrupt/infer", json={"inputs": []})
    assert index["mlp"]["state"] == "READY"
    assert index["corrupt"]["state"] == "UNAVAILABLE"
    assert "ONNX Runtime cannot load model.onnx" in index["corrupt"]["reason"]
    assert index["no-inputs"]["state"] == "UNAVAILABLE"
    assert "the graph has no inputs" in index["no-inputs"]["reason"]
    assert index["zipmapped"]["state"] == "UNAVAILABLE"
    assert "output 'output_probability' is a seq(map(int64,tensor(float)))" in index["zipmapped"]["reason"]
    assert "options={'zipmap': False}" in index["zipmapped"]["reason"]  # what to do about it
    assert index["passed-through"]["state"] == "UNAVAILABLE"
    assert index["passed-through"]["reason"].endswith(  # pydantic's wording of it left out
        "model.onnx cannot be served: it does not make a tensors model: input and output names must be unique, "
        "got ['features', 'features', 'scores']")
    assert served.status_code == 200
    assert refused.status_code == 503


async def test_a_model_of_scalars_takes_and_gives_rank_0_tensors(tmp_path: Path) -> None:
    """A scalar input is no batch axis: the model runs a request at a time, given the scalar
    as sent (once a 500: ORT refused the numpy scalar the batch's first row had become)."""
    save(tmp_path, "squared", squared())
    request = {"inputs": [{"name": "t", "shape": [], "datatype": "FP32", "data": [3.0]}]}
    async with serving(model_dir=tmp_path) as client:
        metadata = (await client.get("/v2/models/squared")).json()
        as_json = await client.post("/v2/models/squared/infer", json=request)
        as_binary = await client.post("/v2/models/squared/infer", json={
            **request, "outputs": [{"name": "squared", "parameters": {"binary_data": True}}]})
        as_triton_gives_it = await client.post("/v2/models/squared/infer", json={
            "inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [3.0]}]})
        two = await client.post("/v2/models/squared/infer", json={
            "inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": [3.0, 4.0]}]})
    assert metadata["inputs"] == [{"name": "t", "datatype": "FP32", "shape": [1]}]  # Triton's dims [1] reshaped to []
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["outputs"] == [{"name": "squared", "datatype": "FP32", "shape": [], "data": [9.0]}]
    assert as_binary.status_code == 200, as_binary.text
    header_length = int(as_binary.headers["inference-header-content-length"])
    assert np.frombuffer(as_binary.content[header_length:], "<f4").tolist() == [9.0]
    assert as_triton_gives_it.json()["outputs"] == as_json.json()["outputs"]
    assert two.status_code == 400
    assert "must have shape []" in two.json()["error"]


SHAPES_DECLARED = """max_batch_size: 8
dynamic_batching { }
input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


async def test_tensors_that_declare_no_shape_are_told_from_scalars(tmp_path: Path) -> None:
    """ONNX Runtime gives [] for a tensor that declares no shape, as for a scalar; the file
    tells them apart. An input without one is refused until its shape is declared (it was
    served as a scalar, or failed its warm-up, and a declared shape was refused as "rank 0
    in the graph"); an output without one has the shape ORT infers, else the rank it has
    when the model runs."""
    save(tmp_path, "undeclared", shapeless_mlp(), checked=False)
    save(tmp_path, "declared", shapeless_mlp(), checked=False)
    (tmp_path / "declared" / "config.pbtxt").write_text(SHAPES_DECLARED)
    save(tmp_path, "inputs-declared", shapeless_mlp(), checked=False)
    (tmp_path / "inputs-declared" / "config.pbtxt").write_text(SHAPES_DECLARED.split("output")[0])
    save(tmp_path, "outputs-shapeless", shapeless_mlp(inputs=False), checked=False)
    save(tmp_path, "squared", squared())
    features = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    want = reference(tmp_path / "declared" / "1" / "model.onnx", {"features": features})["scores"]
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        index = {e["name"]: e for e in (await client.post("/v2/repository/index", headers=ADMIN)).json()}
        answers = {name: await client.post(f"/v2/models/{name}/infer",
                                           json=v2({"features": features}, {"features": "FP32"}))
                   for name in ("declared", "inputs-declared", "outputs-shapeless")}
        configs = {name: (await client.get(f"/v2/models/{name}/config")).json()
                   for name in ("declared", "inputs-declared", "outputs-shapeless", "squared")}
    assert index["undeclared"]["state"] == "UNAVAILABLE"
    assert "inputs ['features'] declare no shape in the graph, not even a rank" in index["undeclared"]["reason"]
    assert "config.pbtxt" in index["undeclared"]["reason"]  # where to declare it
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        (scores,) = answer.json()["outputs"]
        assert scores["shape"] == [5, 3]
        np.testing.assert_allclose(scores["data"], want.ravel(), rtol=1e-5, atol=1e-6)
    assert configs["declared"]["max_batch_size"] == 8
    assert [t["dims"] for t in configs["declared"]["input"] + configs["declared"]["output"]] == [[4], [3]]
    assert [t["dims"] for t in configs["inputs-declared"]["output"]] == [[-1]]  # the run's rank 2, batch axis and 1
    assert [t["dims"] for t in configs["outputs-shapeless"]["output"]] == [[3]]  # as ORT inferred it
    assert configs["squared"]["max_batch_size"] == 0  # a scalar is still a scalar
    assert [t["dims"] for t in configs["squared"]["input"]] == [[1]]


def test_a_scalar_declared_with_dimensions_is_still_refused(tmp_path: Path) -> None:
    import onnxruntime as ort

    from app.graph import disagreements, shapeless_tensors
    from app.manifest import Manifest

    path = save(tmp_path, "squared", squared())
    session = ort.InferenceSession(str(path))
    shapeless = save(tmp_path, "shapeless", shapeless_mlp(), checked=False)
    assert shapeless_tensors(session, path.read_bytes()) == frozenset()
    assert shapeless_tensors(ort.InferenceSession(str(shapeless)), shapeless.read_bytes()) == {"features", "scores"}
    manifest = Manifest.model_validate({
        "name": "squared", "version": 1, "task": "tensors", "description": "a scalar declared as [4]",
        "inputs": [{"name": "t", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "squared", "datatype": "FP32", "shape": [4]}],
        "variants": {"fp32": {"file": "model.onnx", "sha256": "0" * 64, "size_bytes": 1}},
        "preferred_variant": {"cpu": "fp32", "cuda": "fp32"},
        "batching": {"max_batch_size": 0, "max_queue_delay_ms": 0}})
    assert disagreements(session, manifest, shapeless_tensors(session, path.read_bytes())) == [
        "input 't' has rank 0 in the graph ([]), 1 in the manifest ([4])",
        "output 'squared' has rank 0 in the graph ([]), 1 in the manifest ([4])"]


async def test_weights_in_an_external_data_file_beside_the_graph_are_read_from_its_folder(tmp_path: Path) -> None:
    """ONNX's external data (every graph over 2 GB; many exporters write it for smaller ones):
    read from the version's folder, wherever the server runs; a path out of it is refused."""
    path = save(tmp_path, "external", mlp(), external_data="weights.bin")
    escaping = save(tmp_path, "escaping", mlp(), external_data="weights.bin")
    (escaping.parent / "weights.bin").rename(escaping.parent.parent / "weights.bin")  # the model's folder
    model = onnx.load(escaping, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(model, escaping)
    features = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    want = reference(path, {"features": features})["scores"]
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        index = {e["name"]: e for e in (await client.post("/v2/repository/index", headers=ADMIN)).json()}
        answer = await client.post("/v2/models/external/infer", json=v2({"features": features}, {"features": "FP32"}))
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(3, 3), want, rtol=1e-6)
    assert index["escaping"]["state"] == "UNAVAILABLE"
    assert "escapes" in index["escaping"]["reason"]


async def test_a_graph_in_a_folder_of_its_own_is_read_with_its_external_data_as_triton_reads_it(
        tmp_path: Path) -> None:
    """Triton's ONNX Runtime backend takes a model file that is a folder as the model.onnx in
    it, its external data beside it: `1/model.onnx/model.onnx` and `1/model.onnx/weights.bin`
    (or the folder that default_model_filename names). A change to the data reloads it."""
    (tmp_path / "inside" / "1" / "model.onnx").mkdir(parents=True)
    path = save(tmp_path, "inside", mlp(), file="model.onnx/model.onnx", external_data="weights.bin")
    (tmp_path / "named" / "1" / "net.onnx").mkdir(parents=True)
    save(tmp_path, "named", mlp(), file="net.onnx/model.onnx", external_data="weights.bin")
    (tmp_path / "named" / "config.pbtxt").write_text('default_model_filename: "net.onnx"')
    (tmp_path / "empty" / "1" / "model.onnx").mkdir(parents=True)
    features = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    want = reference(path, {"features": features})["scores"]
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        index = {e["name"]: e for e in (await client.post("/v2/repository/index", headers=ADMIN)).json()}
        answers = [await client.post(f"/v2/models/{name}/infer", json=v2({"features": features}, {"features": "FP32"}))
                   for name in ("inside", "named")]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(2, 3), want, rtol=1e-6)
    assert index["empty"]["state"] == "UNAVAILABLE"
    assert "no manifest.json and no model.onnx/model.onnx: nothing to serve" in index["empty"]["reason"]
    before = manifest_fingerprint(path.parent.parent)
    weights = path.parent / "weights.bin"
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert manifest_fingerprint(path.parent.parent) != before


async def test_nan_and_infinities_go_in_and_come_back_as_triton_writes_them(tmp_path: Path) -> None:
    """JSON has no words for them; Triton reads and writes NaN, Infinity and -Infinity (as
    Python's json does), and its clients send them so. orjson wrote null, which a client
    reads as a missing value, or as NaN where the model said infinity."""
    save(tmp_path, "widened", widened())
    body = (b'{"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", '
            b'"data": [NaN, -Infinity, Infinity, 1.5, 1e30, 2]}]}')
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/widened/infer", content=body)
        lowercase = await client.post("/v2/models/widened/infer", content=body.replace(b"NaN", b"nan"))
        rows = 4000  # a body of over 16 KB: parsed on a decode thread (app/protocol/values.py)
        mid_sized = await client.post("/v2/models/widened/infer", content=(
            b'{"inputs": [{"name": "x", "shape": [%d, 2], "datatype": "FP32", "data": [NaN, Infinity%s]}]}'
            % (rows, b", 0.5" * (2 * rows - 2))))
        finite = await client.post("/v2/models/widened/infer", json=v2({"x": np.ones((1, 2), np.float32)},
                                                                          {"x": "FP32"}))
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in json.loads(answer.text)["outputs"]}
    for name in ("wide", "half"):
        assert math.isnan(outputs[name][0])
        assert outputs[name][1:4] == [-math.inf, math.inf, 1.5]
    assert outputs["wide"][4] == float(np.float32(1e30))
    assert outputs["half"][4] == math.inf  # past FP16's range
    assert b"Infinity" in answer.content
    assert b"null" not in answer.content
    assert mid_sized.status_code == 200, mid_sized.text
    half = json.loads(mid_sized.text)["outputs"][1]["data"]
    assert math.isnan(half[0])
    assert half[1:] == [math.inf] + [0.5] * (2 * rows - 2)
    assert lowercase.status_code == 400
    assert "request body is not valid JSON" in lowercase.json()["error"]
    assert finite.status_code == 200
    assert orjson.loads(finite.content)["outputs"][0]["data"] == [1.0, 1.0]  # strict JSON when it can be


async def test_an_output_that_is_not_a_row_per_input_row_is_no_batch_axis(tmp_path: Path) -> None:
    """Two rows' flattened outputs join up as the pair's does; served as a batch, every
    request was a 500 ("returned 4 rows of 'values' for a batch of 1")."""
    save(tmp_path, "flattened", flattened())
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    async with serving(model_dir=tmp_path) as client:
        config = (await client.get("/v2/models/flattened/config")).json()
        answers = await asyncio.gather(*[
            client.post("/v2/models/flattened/infer", json=v2({"x": x + i}, {"x": "FP32"})) for i in range(8)])
    assert config["max_batch_size"] == 0
    assert "its first axis is not one row per input row" in config["parameters"]["batching"]["string_value"]
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == (x + i).ravel().tolist()


async def test_an_index_into_a_table_of_two_rows_still_batches(tmp_path: Path) -> None:
    """BERT's token_type_ids index a table of two rows: generated ids of 1 and 2 failed on it,
    and the model was served without batching. Ids of 0 and 1 are tried next."""
    save(tmp_path, "segments", embedding(rows=2))
    save(tmp_path, "ids", embedding(rows=10))
    async with serving(model_dir=tmp_path) as client:
        configs = {name: (await client.get(f"/v2/models/{name}/config")).json() for name in ("segments", "ids")}
        answer = await client.post("/v2/models/segments/infer", json=v2({"ids": np.array([0, 1, 1])}, {"ids": "INT64"}))
    for config in configs.values():
        assert config["max_batch_size"] > 0, config["parameters"]["batching"]
        assert config["parameters"]["batching"]["string_value"].startswith("measured")
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [3, 2]


def test_inputs_are_generated_with_the_first_integers_the_model_takes(tmp_path: Path) -> None:
    made = {name: graph for name, graph in (("ten", embedding(rows=10)), ("two", embedding(rows=2)),
                                            ("one", embedding(rows=1)))}
    chosen = {}
    for name, graph in made.items():
        session = ort.InferenceSession(str(save(tmp_path, name, graph)))
        inputs, outputs = graph_tensors(session)
        manifest = Manifest(name=name, version=1, task="tensors", inputs=inputs, outputs=outputs,
                            variants={"fp32": {"file": "model.onnx", "sha256": "0" * 64, "size_bytes": 1}},
                            batching={"max_batch_size": 8, "max_queue_delay_ms": 0})
        ids = inputs_it_takes(session, manifest)(manifest, 4)["ids"]
        chosen[name] = sorted(set(ids.tolist()))
    assert chosen == {"ten": [1, 2], "two": [0, 1], "one": [1, 2]}  # a table of one row takes none: the first


async def test_outputs_that_are_nan_for_a_row_do_not_make_the_first_axis_no_batch_axis(tmp_path: Path) -> None:
    """NaN (a masked mean over a row whose mask is all 0, a log of a negative) compared unequal
    to itself, so such a model was served without batching."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Log", ["x"], ["log"])], "logged",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [onnx.helper.make_tensor_value_info("log", onnx.TensorProto.FLOAT, ["n", 4])])
    save(tmp_path, "logged", graph)
    async with serving(model_dir=tmp_path) as client:
        config = (await client.get("/v2/models/logged/config")).json()
    assert config["max_batch_size"] > 0, config["parameters"]["batching"]


async def test_a_kernel_failing_on_a_requests_values_is_that_requests_400(tmp_path: Path) -> None:
    """ORT's kernels report some bad values as failures of their own (FAIL, RUNTIME_EXCEPTION).
    Where the model still answers its warm-up's inputs right after, the request was at fault:
    a 400 that does not count toward the failure breaker (once: 500s, and after
    failure_threshold of them the model rested, a 503 for everyone), and a request batched
    with it is answered."""
    save(tmp_path, "top-k", top_k())
    save(tmp_path, "parsed", parsed_numbers())
    scores = {"name": "scores", "shape": [1, 5], "datatype": "FP32", "data": [5, 1, 4, 2, 3]}

    def k(value: int) -> dict[str, Any]:
        return {"inputs": [scores, {"name": "k", "shape": [1], "datatype": "INT64", "data": [value]}]}

    def text(value: str) -> dict[str, Any]:
        return {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [value]}]}

    async with serving(model_dir=tmp_path, failure_threshold=2, failure_cooldown_s=60) as client:
        too_many = [await client.post("/v2/models/top-k/infer", json=k(9)) for _ in range(4)]
        good = await client.post("/v2/models/top-k/infer", json=k(2))
        batched = await asyncio.gather(*[client.post("/v2/models/parsed/infer", json=text(value))
                                         for value in ["1.5", "x", "-2", "not a number"] * 4])
        still = await client.post("/v2/models/parsed/infer", json=text("7"))
        stats = (await client.get("/v2/models/parsed/stats")).json()["model_stats"][0]
        metrics = (await client.get("/metrics")).text
    for refused in too_many:
        assert refused.status_code == 400, refused.text
        assert "the model failed on the input" in refused.json()["error"]
        assert "k argument [9] should not be greater than" in refused.json()["error"]
    assert good.status_code == 200, good.text
    assert good.json()["outputs"][0]["data"] == [5.0, 4.0]
    assert [a.status_code for a in batched] == [200, 400, 200, 400] * 4
    assert [a.json()["outputs"][0]["data"] for a in batched[::2]] == [[1.5], [-2.0]] * 4
    assert still.status_code == 200
    assert stats["inference_count"] == 9  # the rows answered, those of a batch run a request at a time too
    assert stats["inference_stats"]["fail"]["count"] == 8
    assert 'ortserve_inference_items_total{model="parsed"} 9.0' in metrics
    assert 'ortserve_batch_failures_total{model="parsed"} 0.0' in metrics  # a client's 400s: no fault


async def test_a_model_file_is_read_only_from_its_version_folder(tmp_path: Path) -> None:
    """A name that leads out (config.json's model_file) or a link that does (a model linked
    into a download cache) is not read, and the reason says which and what to do; a link
    that stays in the folder is followed."""
    elsewhere = save(tmp_path / "cache", "blobs", mlp())
    save(tmp_path / "models", "named-out", mlp())
    (tmp_path / "models" / "named-out" / "config.json").write_text(json.dumps({"model_file": "../../elsewhere.onnx"}))
    for name, target in (("linked-out", elsewhere), ("linked-in", Path("real.onnx"))):
        folder = tmp_path / "models" / name / "1"
        folder.mkdir(parents=True)
        if name == "linked-in":
            (folder / "real.onnx").write_bytes(elsewhere.read_bytes())
        (folder / "model.onnx").symlink_to(target)
    async with serving(model_dir=tmp_path / "models", admin_token=TOKEN) as client:
        index = {e["name"]: e for e in (await client.post("/v2/repository/index", headers=ADMIN)).json()}
    assert index["named-out"]["state"] == "UNAVAILABLE"
    assert "model file '../../elsewhere.onnx' lies outside the version's folder" in index["named-out"]["reason"]
    assert index["linked-out"]["state"] == "UNAVAILABLE"
    assert ("model file 'model.onnx' is a link that leads out of the version's folder; links out of it are not "
            "followed: copy the file in") in index["linked-out"]["reason"]
    assert index["linked-in"]["state"] == "READY"
