"""`python -m app import` and `python -m app check`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from app.manifest import load_manifest
from load_tests.server import ROOT
from tests.app.conftest import copy_model, serving
from tests.app.onnx_models import embedding, masked_mean, mlp, pooled, reference, save, shapeless_mlp


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=180, check=False)


def test_import_writes_the_next_version_with_a_digest_and_the_measured_batching(tmp_path: Path) -> None:
    source = save(tmp_path / "mine", "mlp", mlp())
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nowl\n")
    models = tmp_path / "models"
    first = run("import", str(source), "--name", "animals", "--labels", str(labels), "--model-dir", str(models))
    second = run("import", str(source), "--name", "animals", "--model-dir", str(models))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "imported animals version 1" in first.stdout
    assert "imported animals version 2" in second.stdout
    assert "batching: max_batch_size" in first.stdout
    assert "input features: FP32 [-1, 4]" in first.stdout
    manifest = load_manifest(models / "animals" / "1")  # verifies the sha256 it recorded
    assert manifest.labels == ["cat", "dog", "owl"]
    assert manifest.task == "tensors"
    assert manifest.batching.cost_per_item_ms
    assert manifest.batching.reason.startswith("measured")
    assert sorted(p.name for p in (models / "animals").iterdir()) == ["1", "2"]  # nothing half made left


def test_import_keeps_and_says_the_queue_policy_and_priority_levels_of_its_configuration(tmp_path: Path) -> None:
    source = save(tmp_path / "mine", "mlp", mlp())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batching": {
        "max_batch_size": 8, "max_queue_delay_ms": 1, "queue": {"max_requests": 16},
        "priorities": {"levels": 2, "default_level": 2,
                       "queues": {"1": {"timeout_ms": 5, "timeout_action": "delay"}}}}}))
    models = tmp_path / "models"
    imported = run("import", str(source), "--name", "ranked", "--config", str(config), "--model-dir", str(models))
    assert imported.returncode == 0, imported.stderr
    assert "  queue: at most 16 requests\n" in imported.stdout
    assert "  priority levels 1 (the highest) to 2, default 2; level 1: delay after 5 ms\n" in imported.stdout
    priorities = load_manifest(models / "ranked" / "1").batching.priorities
    assert priorities is not None
    assert (priorities.levels, priorities.queues[1].timeout_action) == (2, "delay")


async def test_an_imported_models_reshapes_are_kept_in_its_manifest_and_served(tmp_path: Path) -> None:
    """Triton's reshape said in the import's config.json: the manifest keeps it, `check`
    checks it against the graph, and the server serves clients' shapes."""
    source = save(tmp_path / "mine", "pooled", pooled(1))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "batching": {"max_batch_size": 0, "max_queue_delay_ms": 0},
        "inputs": [{"name": "data_0", "datatype": "FP32", "shape": [3, 8, 8], "reshape": [1, 3, 8, 8]}],
        "outputs": [{"name": "fc6_1", "datatype": "FP32", "shape": [4], "reshape": [1, 4, 1, 1]}]}))
    models = tmp_path / "models"
    imported = run("import", str(source), "--name", "pooled", "--config", str(config), "--model-dir", str(models))
    checked = run("check", str(models))
    assert imported.returncode == 0, imported.stderr
    assert "input data_0: FP32 [3, 8, 8] (the graph's [1, 3, 8, 8])" in imported.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr
    manifest = load_manifest(models / "pooled" / "1")
    assert [t.reshape for t in manifest.outputs] == [[1, 4, 1, 1]]
    image = np.random.default_rng(2).standard_normal((3, 8, 8)).astype(np.float32)
    async with serving(model_dir=models) as client:
        answer = await client.post("/v2/models/pooled/infer", json={"inputs": [
            {"name": "data_0", "shape": [3, 8, 8], "datatype": "FP32", "data": image.ravel().tolist()}]})
    assert answer.status_code == 200, answer.text
    (out,) = answer.json()["outputs"]
    assert out["shape"] == [4]
    np.testing.assert_allclose(out["data"], reference(source, {"data_0": image[np.newaxis]})["fc6_1"].ravel(),
                               rtol=1e-6, atol=1e-6)


def test_an_imported_graph_without_shapes_keeps_the_declared_ones(tmp_path: Path) -> None:
    """A graph whose tensors declare no shape (ONNX Runtime gives [] as for a scalar): the
    import's config.json declares them, the manifest keeps them, and `check` reads the
    manifest against the graph without calling them rank 0."""
    source = save(tmp_path / "mine", "mlp", shapeless_mlp(), checked=False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 1},
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]}))
    models = tmp_path / "models"
    refused = run("import", str(source), "--name", "mlp", "--model-dir", str(models))
    imported = run("import", str(source), "--name", "mlp", "--config", str(config), "--model-dir", str(models))
    checked = run("check", str(models))
    assert refused.returncode == 1
    assert "declare no shape in the graph" in refused.stderr
    assert imported.returncode == 0, imported.stderr
    assert "input features: FP32 [-1, 4]" in imported.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [t.shape for t in load_manifest(models / "mlp" / "1").outputs] == [[-1, 3]]


def test_import_refuses_what_cannot_be_served_and_leaves_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    models = tmp_path / "models"
    done = run("import", str(broken), "--name", "broken", "--model-dir", str(models))
    bad_name = run("import", str(broken), "--name", "../up", "--model-dir", str(models))
    assert done.returncode == 1
    assert "broken.onnx" in done.stderr
    assert list((models / "broken").iterdir()) == []
    assert bad_name.returncode == 2
    assert "model name" in bad_name.stderr


def test_import_of_a_model_with_external_data_says_to_serve_it_as_a_drop_in(tmp_path: Path) -> None:
    """Import copies and digests the graph alone; a graph whose weights lie in files beside
    it is refused with what to do instead, and nothing is left behind."""
    source = save(tmp_path / "mine", "mlp", mlp(), external_data="weights.bin")
    models = tmp_path / "models"
    done = run("import", str(source), "--name", "mlp", "--model-dir", str(models))
    assert done.returncode == 1
    assert "kept in external data files beside it" in done.stderr
    assert "serve it as a drop-in instead" in done.stderr
    assert list((models / "mlp").iterdir()) == []


def test_import_of_a_configuration_with_warmup_samples_says_to_serve_it_as_a_drop_in(tmp_path: Path) -> None:
    source = save(tmp_path / "mine", "mlp", mlp())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"warmup": [{"inputs": {"features": {"datatype": "FP32", "dims": [4],
                                                                      "data": "zero"}}}]}))
    models = tmp_path / "models"
    done = run("import", str(source), "--name", "mlp", "--model-dir", str(models), "--config", str(config))
    assert done.returncode == 1
    assert "warm-up samples are not imported; serve the model as a drop-in" in done.stderr
    assert not (models / "mlp").exists() or list((models / "mlp").iterdir()) == []


def test_check_passes_a_good_repository_and_lists_every_problem_of_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good"
    copy_model(good, "fashion-cnn", 3)
    save(good, "lookup", embedding())
    ok = run("check", str(good))
    bad = tmp_path / "bad"
    copy_model(bad, "fashion-cnn", 3)
    manifest = bad / "fashion-cnn" / "3" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["variants"]["fp32"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(raw))
    save(bad, "lookup", embedding())
    (bad / "lookup" / "config.pbtxt").write_text('platform: "tensorrt_plan"')
    (bad / "corrupt" / "1").mkdir(parents=True)
    (bad / "corrupt" / "1" / "model.onnx").write_bytes(b"\x00" * 64)
    (bad / "Bad Name").mkdir()
    failed = run("check", str(bad))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 version(s) checked, 0 problem(s)" in ok.stdout
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert any("fashion-cnn/3" in line and "sha256" in line for line in lines), failed.stdout
    assert any("lookup/config.pbtxt" in line and "only ONNX models" in line for line in lines), failed.stdout
    assert any("corrupt/1" in line and "ONNX Runtime cannot load" in line for line in lines), failed.stdout
    assert any("Bad Name" in line for line in lines), failed.stdout
    assert "4 problem(s)" in failed.stdout


async def test_an_imported_model_that_masks_its_padding_keeps_that_in_its_manifest(tmp_path: Path) -> None:
    source = save(tmp_path / "mine", "pooled", masked_mean())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batching": {"pad": True}}))
    models = tmp_path / "models"
    imported = run("import", str(source), "--name", "pooled", "--config", str(config), "--model-dir", str(models))
    assert imported.returncode == 0, imported.stderr
    manifest = load_manifest(models / "pooled" / "1")
    assert manifest.batching.pad
    checked = run("check", str(models))
    assert "requests of other lengths zero-padded together" in checked.stdout, checked.stdout + checked.stderr
    async with serving(model_dir=models) as client:
        answers = [await client.post("/v2/models/pooled/infer", json={"inputs": [
            {"name": "ids", "shape": [1, n], "datatype": "INT64", "data": [1] * n},
            {"name": "mask", "shape": [1, n], "datatype": "INT64", "data": [1] * n}]}) for n in (2, 5)]
    assert [a.status_code for a in answers] == [200, 200]


def test_an_imported_model_keeps_its_queue_bounds_in_its_manifest(tmp_path: Path) -> None:
    source = save(tmp_path / "mine", "mlp", mlp())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batching": {"queue": {"max_requests": 16, "timeout_ms": 40}}}))
    models = tmp_path / "models"
    imported = run("import", str(source), "--name", "mlp", "--config", str(config), "--model-dir", str(models))
    assert imported.returncode == 0, imported.stderr
    queue = load_manifest(models / "mlp" / "1").batching.queue
    assert queue is not None
    assert (queue.max_requests, queue.timeout_ms) == (16, 40)


async def test_an_imported_stateful_model_keeps_its_sequences_and_is_served_so(tmp_path: Path) -> None:
    from load_tests.sequences import accumulator

    source = save(tmp_path / "mine", "accumulator", accumulator())
    config = tmp_path / "config.json"
    flag = {"datatype": "INT32", "false_true": [0, 1]}
    config.write_text(json.dumps({"batching": {"max_batch_size": 4, "max_queue_delay_ms": 1}, "sequence": {
        "controls": [{"input": "START", "kind": "start", **flag}, {"input": "END", "kind": "end", **flag},
                     {"input": "READY", "kind": "ready", **flag},
                     {"input": "CORRID", "kind": "correlation_id", "datatype": "UINT64"}],
        "states": [{"input": "acc_in", "output": "acc_out", "datatype": "FP32", "shape": [1]}]}}))
    models = tmp_path / "models"
    imported = run("import", str(source), "--name", "summing", "--config", str(config), "--model-dir", str(models))
    checked = run("check", str(models))
    assert imported.returncode == 0, imported.stderr
    assert "  sequences: controls START (start), END (end), READY (ready), CORRID (correlation_id); states " \
           "acc_in <- acc_out; at most 1024 active, ended when idle 1000 ms\n" in imported.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr
    async with serving(model_dir=models) as client:
        totals = []
        for i, x in enumerate([4.0, 5.0]):
            answer = await client.post("/v2/models/summing/infer", json={
                "parameters": {"sequence_id": 6, "sequence_start": i == 0},
                "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}]})
            assert answer.status_code == 200, answer.text
            totals.append(answer.json()["outputs"][0]["data"][0])
    assert totals == [4.0, 9.0]
