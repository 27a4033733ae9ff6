"""Triton's model_warmup: a configuration's warm-up requests read into the arrays a model is
warmed up (and, completed from its file, checked) with; models that refuse generated inputs
served because of them, and samples that do not fit refused with why."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from app.manifest import BatchingDefaults, Manifest, TensorSpec, VariantFile
from app.model_facts import WarmupInput, WarmupSample, from_triton_text
from app.warmup_samples import WarmupError, rows_of, sample_arrays
from tests.app.conftest import serving
from tests.app.onnx_models import picked, reshaped_by_input, save


def manifest_of(inputs: list[TensorSpec], batches: bool = True) -> Manifest:
    return Manifest(name="m", version=1, task="tensors", inputs=inputs,
                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1] if batches else [1])],
                    variants={"fp32": VariantFile(file="model.onnx", sha256="0" * 64, size_bytes=1)},
                    batching=BatchingDefaults(max_batch_size=8 if batches else 0, max_queue_delay_ms=0))


X = TensorSpec(name="x", datatype="FP32", shape=[-1, 2, 3])
IDS = TensorSpec(name="ids", datatype="INT64", shape=[-1, -1])


def sample(batch_size: int = 1, **inputs: WarmupInput) -> WarmupSample:
    return WarmupSample(name="s", batch_size=batch_size, inputs=inputs)


def test_a_files_row_is_repeated_for_the_batch_and_read_little_endian(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "x.bin").write_bytes(np.arange(6, dtype="<f4").tobytes())
    (tmp_path / "warmup" / "ids.bin").write_bytes(np.array([[7, 8], [9, 10], [11, 12]], dtype="<i8").tobytes())
    arrays = sample_arrays(sample(3, x=WarmupInput(datatype="FP32", dims=[2, 3], data="file", file="x.bin"),
                                  ids=WarmupInput(datatype="INT64", dims=[2], data="file", file="ids.bin")),
                           manifest_of([X, IDS]), tmp_path)
    assert arrays["x"].shape == (3, 2, 3)
    np.testing.assert_array_equal(arrays["x"][2], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert arrays["ids"].dtype == np.int64
    np.testing.assert_array_equal(arrays["ids"], [[7, 8], [9, 10], [11, 12]])  # the whole batch given
    np.testing.assert_array_equal(rows_of(arrays, 5)["ids"][:, 0], [7, 9, 11, 7, 9])  # its rows, in turn


def test_zero_and_random_data() -> None:
    arrays = sample_arrays(sample(2, x=WarmupInput(datatype="FP32", dims=[2, 3], data="random"),
                                  ids=WarmupInput(datatype="INT64", dims=[4], data="zero")),
                           manifest_of([X, IDS]), Path("."))
    assert arrays["ids"].shape == (2, 4)
    assert not arrays["ids"].any()
    assert arrays["x"].dtype == np.float32
    assert 0 <= arrays["x"].min() <= arrays["x"].max() < 1


def test_bytes_elements_are_read_as_triton_writes_them(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    words = ["yes", "", "naïve"]
    (tmp_path / "warmup" / "words").write_bytes(b"".join(struct.pack("<I", len(w.encode())) + w.encode()
                                                         for w in words))
    spec = TensorSpec(name="words", datatype="BYTES", shape=[3])
    arrays = sample_arrays(sample(words=WarmupInput(datatype="BYTES", dims=[3], data="file", file="words")),
                           manifest_of([spec], batches=False), tmp_path)
    assert arrays["words"].tolist() == words
    (tmp_path / "warmup" / "cut").write_bytes(struct.pack("<I", 10) + b"abc")
    with pytest.raises(WarmupError, match="ends inside a BYTES element"):
        sample_arrays(sample(words=WarmupInput(datatype="BYTES", dims=[3], data="file", file="cut")),
                      manifest_of([spec], batches=False), tmp_path)


@pytest.mark.parametrize(("inputs", "batch_size", "batches", "why"), [
    ({"x": WarmupInput(datatype="FP32", dims=[2, 3], data="zero")}, 1, True, r"gives inputs \['x'\]; the model takes"),
    ({"x": WarmupInput(datatype="FP64", dims=[2, 3], data="zero"),
      "ids": WarmupInput(datatype="INT64", dims=[1], data="zero")}, 1, True, "data_type FP64, the model's is FP32"),
    ({"x": WarmupInput(datatype="FP32", dims=[3, 2], data="zero"),
      "ids": WarmupInput(datatype="INT64", dims=[1], data="zero")}, 1, True, r"dims \[3, 2\] do not fit"),
    ({"x": WarmupInput(datatype="FP32", dims=[2, 3], data="zero"),
      "ids": WarmupInput(datatype="INT64", dims=[1], data="file", file="../secret")}, 1, True, "lies outside"),
    ({"x": WarmupInput(datatype="FP32", dims=[2, 3], data="zero"),
      "ids": WarmupInput(datatype="INT64", dims=[1], data="file", file="missing.bin")}, 1, True, "cannot be read"),
    ({"x": WarmupInput(datatype="FP32", dims=[2, 3], data="file", file="short.bin"),
      "ids": WarmupInput(datatype="INT64", dims=[1], data="zero")}, 2, True, "holds 5 values; one row of dims"),
    ({"x": WarmupInput(datatype="FP32", dims=[2, 3], data="zero"),
      "ids": WarmupInput(datatype="INT64", dims=[1], data="zero")}, 2, False, "the model does not batch"),
])
def test_a_sample_that_does_not_fit_is_refused_with_why(tmp_path: Path, inputs: dict[str, WarmupInput],
                                                         batch_size: int, batches: bool, why: str) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "short.bin").write_bytes(np.arange(5, dtype="<f4").tobytes())
    x = X if batches else TensorSpec(name="x", datatype="FP32", shape=[2, 3])
    ids = IDS if batches else TensorSpec(name="ids", datatype="INT64", shape=[-1])
    with pytest.raises(WarmupError, match=why):
        sample_arrays(sample(batch_size, **inputs), manifest_of([x, ids], batches), tmp_path)


PICKED = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 0 }
input [{ name: "values" data_type: TYPE_FP32 dims: [1] }, { name: "index" data_type: TYPE_INT64 dims: [1] }]
output [{ name: "picked" data_type: TYPE_FP32 dims: [1] }]
"""
PICKED_WARMUP = """
model_warmup [{
  name: "index zero"  batch_size: 2
  inputs { key: "values" value: { data_type: TYPE_FP32 dims: [1] random_data: true } }
  inputs { key: "index" value: { data_type: TYPE_INT64 dims: [1] zero_data: true } }
}]
"""
RESHAPED = """
max_batch_size: 0
input [{ name: "values" data_type: TYPE_FP32 dims: [6] }, { name: "shape" data_type: TYPE_INT64 dims: [2] }]
output [{ name: "grid" data_type: TYPE_FP32 dims: [-1, -1] }]
model_warmup [{
  name: "two by three"  count: 2
  inputs { key: "values" value: { data_type: TYPE_FP32 dims: [6] zero_data: true } }
  inputs { key: "shape" value: { data_type: TYPE_INT64 dims: [2] input_data_file: "shape" } }
}]
"""


def test_the_configurations_text_reads_into_samples() -> None:
    (found,) = from_triton_text(RESHAPED, "m", "m/config.pbtxt").warmup or []
    assert (found.name, found.batch_size, found.count) == ("two by three", 1, 2)
    assert found.inputs["shape"] == WarmupInput(datatype="INT64", dims=[2], data="file", file="shape")
    assert found.inputs["values"].data == "zero"
    assert "model_warmup" not in from_triton_text(RESHAPED, "m", "m/config.pbtxt").ignored


async def test_models_that_refuse_generated_inputs_serve_with_their_warmup_samples(model_root: Path) -> None:
    save(model_root, "picked", picked())
    save(model_root, "picked-without", picked())
    save(model_root, "reshaped", reshaped_by_input())
    (model_root / "picked" / "config.pbtxt").write_text(PICKED + PICKED_WARMUP)
    (model_root / "picked-without" / "config.pbtxt").write_text(PICKED)
    (model_root / "reshaped" / "config.pbtxt").write_text(RESHAPED)
    (model_root / "reshaped" / "warmup").mkdir()
    (model_root / "reshaped" / "warmup" / "shape").write_bytes(np.array([2, 3], dtype="<i8").tobytes())
    async with serving(model_dir=model_root) as client:
        values = [[0.5], [1.5], [2.5]]
        answered = await client.post("/v2/models/picked/infer", json={"inputs": [
            {"name": "values", "shape": [3, 1], "datatype": "FP32", "data": values},
            {"name": "index", "shape": [3, 1], "datatype": "INT64", "data": [[0], [0], [0]]}]})
        grid = await client.post("/v2/models/reshaped/infer", json={"inputs": [
            {"name": "values", "shape": [6], "datatype": "FP32", "data": list(range(6))},
            {"name": "shape", "shape": [2], "datatype": "INT64", "data": [3, 2]}]})
        without = await client.get("/v2/models/picked-without/ready")
        why = (await client.get("/v2/models/picked-without")).json()
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"][0]["data"] == [0.5, 1.5, 2.5]
    assert grid.status_code == 200, grid.text
    assert grid.json()["outputs"][0]["shape"] == [3, 2]
    assert without.status_code != 200  # the same model without samples: refused, generated inputs failing
    assert "generated inputs" in why["error"]


async def test_a_sample_that_does_not_fit_makes_the_version_unavailable_with_why(model_root: Path) -> None:
    save(model_root, "reshaped", reshaped_by_input())
    (model_root / "reshaped" / "config.pbtxt").write_text(RESHAPED)  # its warmup/shape file left out
    async with serving(model_dir=model_root) as client:
        why = (await client.get("/v2/models/reshaped")).json()
        other = await client.get("/v2/models/fashion-cnn/ready")
    assert "model_warmup 'two by three', input 'shape': input_data_file" in why["error"]
    assert "cannot be read" in why["error"]
    assert other.status_code == 200


async def test_a_loads_configuration_may_give_the_samples(model_root: Path) -> None:
    """Triton's repository extension: `parameters.config` with model_warmup, in its JSON form."""
    save(model_root, "picked", picked())
    (model_root / "picked" / "config.pbtxt").write_text(PICKED)
    override = {"model_warmup": [{"name": "index zero", "batch_size": 2, "inputs": {
        "values": {"data_type": "TYPE_FP32", "dims": [1], "random_data": True},
        "index": {"data_type": "TYPE_INT64", "dims": [1], "zero_data": True}}}]}
    token = {"Authorization": "Bearer warm-token"}
    async with serving(model_dir=model_root, admin_token="warm-token", model_control_mode="explicit") as client:
        plain = await client.post("/v2/repository/models/picked/load", headers=token)
        given = await client.post("/v2/repository/models/picked/load", headers=token,
                                  json={"parameters": {"config": json.dumps(override)}})
        ready = await client.get("/v2/models/picked/ready")
    assert plain.status_code == 400
    assert "generated inputs" in plain.json()["error"]
    assert given.status_code == 200, given.text
    assert ready.status_code == 200
