"""One version folder to a ServedModel, or a LoadError with its kind; and the one place
manifest and settings make a batching policy."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest

from app.batching import BatchRecord
from app.loading import Hooks, LoadError, batch_policy, load_version, manifest_fingerprint
from app.manifest import load_manifest
from app.runtime import ort_options
from app.settings import Settings
from tests.app.conftest import copy_model
from tests.app.onnx_models import mlp, save
from tests.conftest import model_folder

ORT = ort_options(["CPUExecutionProvider"], 1, 1)


def settings(**overrides: object) -> Settings:
    return Settings(**({"warmup": False} | overrides))  # type: ignore[arg-type]


def test_a_version_loads_not_started_with_what_its_manifest_says() -> None:
    folder = model_folder("fashion-cnn")
    manifest = load_manifest(folder)
    model = load_version(folder, settings(), ORT)
    assert model.name == "fashion-cnn"
    assert model.version == str(manifest.version)
    assert model.variant == manifest.preferred_variant.get("cpu", "int8")
    assert model.device == "CPU"
    assert model.outputs_fixed
    assert model.batcher.policy.max_batch_size == manifest.batching.max_batch_size
    assert model.batcher.inflight_batches == 0  # not started: the repository starts it


def served_file_changed(folder: Path) -> None:
    manifest = load_manifest(folder)
    (folder / manifest.variants[manifest.preferred_variant.get("cpu", "int8")].file).write_bytes(b"changed")


@pytest.mark.parametrize(("fault", "kind"), [
    (lambda f: (f / "manifest.json").write_text("{"), "manifest"),
    (served_file_changed, "integrity"),
])
def test_a_version_that_cannot_be_served_is_a_load_error_of_its_kind(tmp_path: Path, fault, kind) -> None:  # type: ignore[no-untyped-def]
    folder = copy_model(tmp_path, "fashion-cnn", 1)
    fault(folder)
    with pytest.raises(LoadError) as caught:
        load_version(folder, settings(), ORT)
    assert caught.value.kind == kind


async def test_the_hooks_hear_of_each_batch() -> None:
    folder = model_folder("fashion-cnn")
    records: list[BatchRecord] = []
    model = load_version(folder, settings(), ORT, Hooks(on_batch=records.append))
    model.batcher.start()
    spec = model.manifest.inputs[0]
    rows = np.zeros((3, *spec.shape[1:]), dtype=np.float32)
    outputs = await (await model.batcher.run_or_queue({spec.name: rows}))
    await model.batcher.stop()
    assert len(next(iter(outputs.values()))) == 3
    assert [record.rows for record in records] == [3]


async def test_only_batches_of_large_requests_run_on_the_wide_session() -> None:
    """The wide session has the event loop's core: 32 one-image requests (32 bodies to parse)
    stay narrow however many rows they make; one 32-image request goes wide."""
    from app.runtime import OrtOptions

    model = load_version(model_folder("fashion-cnn"), settings(wide_batch_rows=8, max_batch_size=32,
                                                               max_queue_delay_ms=10_000.0),
                         OrtOptions(["CPUExecutionProvider"], 1, 2))
    assert model.session.wide is not None
    assert model.session.wide_from_rows == 8
    used: list[str] = []
    for name in ("session", "wide"):
        session = getattr(model.session, name)
        session.run = lambda names, feed, real=session.run, name=name: used.append(name) or real(names, feed)
    model.batcher.start()
    spec = model.manifest.inputs[0]

    def images(n: int) -> dict[str, np.ndarray]:
        return {spec.name: np.zeros((n, *spec.shape[1:]), dtype=np.float32)}

    small = await asyncio.gather(*(model.batcher.run_or_queue(images(1)) for _ in range(32)))  # a full batch
    await asyncio.gather(*small)
    await (await model.batcher.run_or_queue(images(32)))
    await model.batcher.stop()
    assert used[-1] == "wide"  # the 32-image request
    assert set(used[:-1]) == {"session"}  # the one-image requests, in one batch or more


def test_settings_override_the_manifests_batching_and_batching_off_splits_every_row() -> None:
    manifest = load_manifest(model_folder("sst2-lstm"))
    own = batch_policy(settings(), manifest)
    assert own.max_batch_size == manifest.batching.max_batch_size
    assert own.max_queue_delay_s == pytest.approx(manifest.batching.max_queue_delay_ms / 1000)
    told = batch_policy(settings(max_batch_size=4, max_queue_delay_ms=7), manifest)
    assert (told.max_batch_size, told.max_queue_delay_s) == (4, pytest.approx(0.007))
    off = batch_policy(settings(max_batch_size=1), manifest)
    assert (off.max_batch_size, off.max_large_batch_size) == (1, 1)


def test_every_setting_a_policy_takes_reaches_it() -> None:
    manifest = load_manifest(model_folder("fashion-cnn"))
    values = {"max_inflight_batches": 3, "idle_dispatch": False, "inline_rows": 2, "inference_threads": 2,
              "max_queue_size": 99, "max_queue_bytes": 12345, "retry_after_s": 7, "inference_niceness": 3,
              "max_large_batch_size": 64}
    policy = batch_policy(settings(**values), manifest)
    assert {name: getattr(policy, name) for name in values} == values


def test_a_manifest_written_again_changes_its_fingerprint(tmp_path: Path) -> None:
    folder = copy_model(tmp_path, "fashion-cnn", 1)
    before = load_version(folder, settings(), ORT).fingerprint
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=4))  # the same facts, other bytes
    assert load_version(folder, settings(), ORT).fingerprint != before


def test_a_drop_ins_external_data_written_again_changes_its_fingerprint(tmp_path: Path) -> None:
    """Poll mode reloads a version whose fingerprint changed: new weights beside an
    unchanged graph are a new model."""
    path = save(tmp_path, "mlp", mlp(), external_data="weights.bin")
    before = manifest_fingerprint(path.parent)
    weights = path.parent / "weights.bin"
    weights.write_bytes(weights.read_bytes()[::-1])
    os.utime(weights, ns=(1, 1))  # a time of its own, however coarse the file system's clock
    after = manifest_fingerprint(path.parent)
    assert after != before
    (path.parent / ".weights.bin.swp").write_text("a dot file, as an editor leaves")
    assert manifest_fingerprint(path.parent) == after


def manifest_with(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    folder = copy_model(tmp_path, "fashion-cnn", 1)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(("change", "reason"), [
    (lambda m: m["inputs"][0].update(name="image"), "input 'image' is not in the graph, whose inputs are ['pixels']"),
    # as a tensors model: a classifier's own check (below) finds these before the graph is read
    (lambda m: (m.update(task="tensors", preprocessing=None), m["inputs"][0].update(shape=[-1, 784])),
     "input 'pixels' has rank 4 in the graph"),
    (lambda m: (m.update(task="tensors", preprocessing=None), m["inputs"][0].update(datatype="FP64")),
     "input 'pixels' is FP32 in the graph, FP64 in the manifest"),
    (lambda m: m["inputs"][0].update(shape=[-1, 784]), "takes one FP32 input of shape [-1, 1, 28, 28]"),
    (lambda m: m["inputs"][0].update(shape=[-1, 1, 28, -1]), "input 'pixels' axis 3 is 28 in the graph, -1"),
    (lambda m: m["outputs"][0].update(name="scores"), "output 'scores' is not in the graph"),
])
def test_a_manifest_that_does_not_match_its_graph_is_refused_at_load_even_without_warm_up(
        tmp_path: Path, change, reason: str) -> None:  # type: ignore[no-untyped-def]
    folder = manifest_with(tmp_path, change)
    with pytest.raises(LoadError) as caught:
        load_version(folder, settings(warmup=False), ORT)
    assert caught.value.kind == "manifest"
    assert reason in caught.value.message


def test_a_warm_up_that_fails_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.runtime import OrtModel

    def failing(self: OrtModel, inputs: dict[str, np.ndarray], may_go_wide: bool = True) -> dict[str, np.ndarray]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(OrtModel, "run", failing)
    with pytest.raises(LoadError) as caught:
        load_version(model_folder("fashion-cnn"), settings(warmup=True), ORT)
    assert caught.value.kind == "warmup"
    assert "warm-up failed: RuntimeError: out of memory" in caught.value.message
