"""The committed models: they load in ONNX Runtime, match their manifests and answer in shape."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from app.manifest import load_manifest, version_folders
from tests.conftest import MODELS

FOLDERS = sorted(folder for model in MODELS.iterdir() for folder in version_folders(model))


def test_both_shipped_models_are_committed() -> None:
    assert {f.parent.name for f in FOLDERS} == {"fashion-cnn", "sst2-lstm"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}-v{p.name}")
def test_artifact_loads_and_produces_declared_shapes(folder) -> None:  # type: ignore[no-untyped-def]
    manifest = load_manifest(folder)  # checks every file's sha256
    for variant, entry in manifest.variants.items():
        assert (folder / entry.file).stat().st_size == entry.size_bytes
        session = ort.InferenceSession(str(folder / entry.file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [t.name for t in manifest.inputs]
        feeds = {}
        for spec in manifest.inputs:
            shape = [3] + [5 if d == -1 else d for d in spec.shape[1:]]
            feeds[spec.name] = np.ones(shape, dtype=spec.numpy_dtype)
        (logits,) = session.run(None, feeds)
        assert logits.shape == (3, len(manifest.labels)), variant
        assert logits.dtype == np.float32
        assert np.isfinite(logits).all()
        assert entry.metrics["accuracy"] > 0.8, f"{variant} accuracy {entry.metrics['accuracy']}"
