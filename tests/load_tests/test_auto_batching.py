"""The auto-batching benchmark's drop-ins (load_tests/auto_batching.py) are the shipped
models without their batching: the same tensors, labels and preprocessing, completed
from the graph and a config.json, with the batching measured."""

from __future__ import annotations

from pathlib import Path

from app.loading import load_version
from app.manifest import latest_version, load_manifest
from app.runtime import ort_options
from app.settings import Settings
from load_tests.auto_batching import MODELS, as_drop_ins
from tests.conftest import ROOT


def test_the_drop_ins_are_the_shipped_models_with_their_batching_left_to_measure(tmp_path: Path) -> None:
    as_drop_ins(ROOT / "models", tmp_path)
    options = ort_options(None, 1, 1)
    for name in MODELS:
        shipped = load_manifest(latest_version(ROOT / "models" / name))
        (folder,) = (tmp_path / name).iterdir()
        assert not (folder / "manifest.json").exists()
        served = load_version(folder, Settings(model_dir=tmp_path), options).manifest
        assert (served.task, served.labels, served.preprocessing) == (shipped.task, shipped.labels, shipped.preprocessing)
        assert served.inputs == shipped.inputs
        assert served.outputs == shipped.outputs
        assert served.batching.reason.startswith("measured")
