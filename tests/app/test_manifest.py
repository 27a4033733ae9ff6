"""The manifest reader: valid manifests load, broken ones are refused with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.manifest import ManifestError, load_manifest
from tests.conftest import model_folder


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    source = model_folder("fashion-cnn")
    target = tmp_path / "fashion-cnn" / source.name
    shutil.copytree(source, target)
    return target


def edit(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_committed_manifest_loads(model_copy: Path) -> None:
    manifest = load_manifest(model_copy)
    assert manifest.name == "fashion-cnn"
    assert manifest.version == int(model_copy.name)
    assert set(manifest.variants) == {"fp32", "int8", "fp16"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("labels"), "labels"),
    (lambda m: m.update(task="translation"), "task"),
    (lambda m: m["inputs"][0].update(shape=[1, 1, 28, 28]), "batch"),
    (lambda m: m["inputs"][0].update(datatype="FLOAT"), "datatype"),
    (lambda m: m["outputs"][0].update(name="ortserve.probabilities"), "the service's own"),
    (lambda m: m.update(labels=["a", "b"]), "10 classes but 2 labels"),
    (lambda m: m["preprocessing"].update(kind="audio"), "preprocessing"),
    (lambda m: m["variants"]["fp32"].update(sha256="0" * 64), "does not match"),
    (lambda m: m["variants"]["int8"].update(file="missing.onnx"), "is missing"),
    (lambda m: m.update(version=m["version"] + 1), "but it lies in folder"),
    (lambda m: m.update(unexpected=True), "unexpected"),
    (lambda m: m["variants"].pop("int8") and m.update(preferred_variant={"cpu": "int8"}), "not listed"),
])
def test_broken_manifests_are_refused(model_copy: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    edit(model_copy, change)
    with pytest.raises(ManifestError, match=message):
        load_manifest(model_copy)


def test_not_json_and_missing(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(model_copy)
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path)
