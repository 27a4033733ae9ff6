"""The whole training pipeline on tiny generated data: artifacts, parity, compression."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="needs the train extra: pip install '.[train]'")

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from app.manifest import load_manifest
from training.__main__ import main

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def built(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    work = tmp_path_factory.mktemp("runs")
    code = main(["build", "--data-dir", str(tiny_data), "--out", str(out), "--work-dir", str(work),
                 "--epochs", "1", "--finetune-epochs", "1", "--teacher-epochs", "1"])
    assert code == 0
    return out


@pytest.mark.parametrize("name", ["fashion-cnn", "sst2-lstm"])
def test_build_writes_a_valid_versioned_artifact(built: Path, name: str) -> None:
    folder = built / name / "1"
    manifest = load_manifest(folder)  # validates schema and sha256 of every file
    assert set(manifest.variants) == {"fp32", "int8", "fp16"}
    for file in ("report.md", "training_curves.png", "variants.png", "accuracy_vs_cost.png"):
        assert (folder / file).stat().st_size > 0
    assert manifest.training["parity_max_abs_error"] < 1e-4
    for variant, entry in manifest.variants.items():
        model = onnx.load(str(folder / entry.file))
        onnx.checker.check_model(model)
        assert model.opset_import[0].version >= 17
        assert [i.name for i in model.graph.input] == [t.name for t in manifest.inputs], variant
        assert entry.metrics["agreement_with_fp32"] >= 0.9
        assert entry.metrics["latency_ms_batch64"] > 0
    assert manifest.variants["int8"].size_bytes < manifest.variants["fp32"].size_bytes
    assert manifest.variants["fp16"].size_bytes < manifest.variants["fp32"].size_bytes
    assert manifest.training["pruned"]["macs"] <= manifest.training["baseline"]["macs"]
    assert manifest.data["sha256"]
    assert manifest.packages["torch"]


@pytest.mark.parametrize("name", ["fashion-cnn", "sst2-lstm"])
def test_the_configured_student_is_served_and_the_manifest_says_how(built: Path, name: str) -> None:
    folder = built / name / "1"
    manifest = load_manifest(folder)
    training, config = manifest.training, manifest.training["config"]
    assert training["student"] == config["served_student"] in ("pruned", "distilled")
    assert training["distilled"]["temperature"] == config["distill_temperature"] > 0
    assert training["distilled"]["soft_weight"] == config["distill_soft_weight"]
    # Distillation changes the weights, never the served model's cost.
    assert training["distilled"]["macs"] == training["pruned"]["macs"]
    served = training["stages"][training["student"]]
    assert manifest.variants["fp32"].metrics["accuracy"] == served["accuracy"]  # the same model, scored twice
    assert 0 <= training["teacher"]["accuracy"] <= 1
    assert training["teacher"]["macs"] > training["distilled"]["macs"]
    # Every stage scored in ONNX Runtime, and reported side by side.
    assert set(training["stages"]) == {"teacher", "trained", "pruned", "distilled"}
    report = (folder / "report.md").read_text()
    assert "## Distillation" in report
    assert "teacher (not served)" in report
    # The teacher is a training artifact: nothing of it is packaged.
    assert not [f for f in folder.iterdir() if "teacher" in f.name]


def test_a_teacher_with_the_same_settings_is_reused(built: Path, tiny_data: Path) -> None:
    work = _work_dir_of(built) / "fashion-cnn"
    before = (work / "wide.pt").stat().st_mtime_ns  # the wide CNN of the teacher
    assert main(["distill", "--model", "fashion-cnn", "--data-dir", str(tiny_data), "--work-dir", str(work.parent),
                 "--epochs", "1", "--finetune-epochs", "1", "--teacher-epochs", "1"]) == 0
    assert (work / "wide.pt").stat().st_mtime_ns == before
    assert main(["distill", "--model", "fashion-cnn", "--data-dir", str(tiny_data), "--work-dir", str(work.parent),
                 "--epochs", "1", "--finetune-epochs", "1", "--teacher-epochs", "3"]) == 0
    assert (work / "wide.pt").stat().st_mtime_ns != before  # other settings: trained again


def test_cnn_structured_pruning_removes_compute(built: Path) -> None:
    training = load_manifest(built / "fashion-cnn" / "1").training
    assert training["pruned"]["macs"] < 0.6 * training["baseline"]["macs"]
    assert training["pruned"]["sparsity"] > 0.2  # dense layers magnitude-pruned


def test_lstm_runs_at_any_batch_size_and_length(built: Path) -> None:
    folder = built / "sst2-lstm" / "1"
    session = ort.InferenceSession(str(folder / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    for batch, width in ((1, 1), (3, 7), (9, 40)):
        ids = np.ones((batch, width), np.int64)
        lengths = np.full(batch, width, np.int64)
        assert session.run(None, {"token_ids": ids, "lengths": lengths})[0].shape == (batch, 2)


def test_a_second_build_gets_the_next_version(built: Path, tiny_data: Path, tmp_path: Path) -> None:
    code = main(["package", "--model", "sst2-lstm", "--data-dir", str(tiny_data), "--out", str(built),
                 "--work-dir", str(_work_dir_of(built))])
    assert code == 0
    assert load_manifest(built / "sst2-lstm" / "2").version == 2


def _work_dir_of(out: Path) -> Path:
    return next(p for p in out.parent.iterdir() if p.name.startswith("runs"))


def test_cpu_variant_is_int8_only_where_it_pays() -> None:
    from training.pipeline import cpu_variant

    def scores(fp32_ms: float, int8_ms: float, int8_acc: float = 0.9) -> dict:
        return {"fp32": {"latency_ms_batch64": fp32_ms, "accuracy": 0.9},
                "int8": {"latency_ms_batch64": int8_ms, "accuracy": int8_acc}}

    assert cpu_variant(scores(10.0, 6.0)) == "int8"
    assert cpu_variant(scores(4.0, 3.98)) == "fp32"  # no real speed-up
    assert cpu_variant(scores(10.0, 6.0, int8_acc=0.85)) == "fp32"  # too inaccurate
