"""Triton's model metadata and configuration, built from a manifest and how it is served."""

from __future__ import annotations

from app.manifest import load_manifest
from app.protocol.triton import PLATFORM, model_config, model_metadata, triton_shape
from tests.conftest import model_folder


def test_one_value_per_item_is_a_column_to_tritons_tools() -> None:
    assert triton_shape([-1]) == [-1, 1]
    assert triton_shape([-1, 128]) == [-1, 128]


def test_metadata_lists_every_tensor_with_the_batch_axis() -> None:
    manifest = load_manifest(model_folder("sst2-lstm"))
    meta = model_metadata(manifest, ["1", "2"], "int8", ["CPUExecutionProvider"])
    assert meta["platform"] == PLATFORM
    assert meta["versions"] == ["1", "2"]
    assert [t["name"] for t in meta["inputs"]] == [t.name for t in manifest.inputs]
    assert all(t["shape"][0] == -1 for t in meta["inputs"] + meta["outputs"])
    assert meta["parameters"]["labels"] == manifest.labels


def test_config_leaves_out_the_batch_axis_and_says_where_batches_run() -> None:
    manifest = load_manifest(model_folder("sst2-lstm"))
    config = model_config(manifest, variant="fp16", device="GPU", max_batch_size=32, max_queue_delay_s=0.002,
                          concurrent_batches=2, version_policy={"latest": {"num_versions": 1}})
    assert config["max_batch_size"] == 32
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["instance_group"] == [{"name": "sst2-lstm", "kind": "KIND_GPU", "count": 2}]
    by_name = {t["name"]: t for t in config["input"]}
    for spec in manifest.inputs:
        assert by_name[spec.name]["dims"] == triton_shape(spec.shape)[1:]
        assert by_name[spec.name]["data_type"] == f"TYPE_{spec.datatype}"
    lengths = next(t for t in config["input"] if t["dims"] == [1])  # a length per text: [-1] in the manifest
    assert lengths["reshape"] == {"shape": []}
