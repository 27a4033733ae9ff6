"""Triton's ensembles: a model with no graph of its own whose steps run other served models
on its tensors. Made of small graphs a user might chain (a scaler, then a classifier),
answered as ONNX Runtime answers the steps run one after the other."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import helper

from app import model_tools
from app.ensemble import _said_of
from app.ensemble_plan import waves
from app.errors import QueueFull
from app.manifest import EnsembleStep, Manifest, write_manifest
from app.model_facts import FactsError, from_triton_text
from load_tests.server import ServerProcess
from tests.app.conftest import serving, serving_grpc
from tests.app.onnx_models import FLOAT, mlp, reference, save
from tests.app.repository.calls import ADMIN, TOKEN, index


def scaler(factor: float = 2.0) -> Any:
    """x [batch, 4] -> x * factor: a preprocessing step."""
    weight = helper.make_tensor("factor", FLOAT, [], [factor])
    return helper.make_graph([helper.make_node("Mul", ["x", "factor"], ["scaled"])], "scaler",
                             [helper.make_tensor_value_info("x", FLOAT, ["batch", 4])],
                             [helper.make_tensor_value_info("scaled", FLOAT, ["batch", 4])], [weight])


def pipeline(max_batch_size: int = 8, scale_version: int = -1, extra: str = "") -> str:
    """raw -> scale (x -> scaled) -> classify (features -> scores) -> out."""
    return f'''
name: "pipeline"
platform: "ensemble"
max_batch_size: {max_batch_size}
input [ {{ name: "raw" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "out" data_type: TYPE_FP32 dims: [ 3 ] }} ]
ensemble_scheduling {{
  step [
    {{ model_name: "scale" model_version: {scale_version}
      input_map {{ key: "x" value: "raw" }} output_map {{ key: "scaled" value: "doubled" }} }},
    {{ model_name: "classify" model_version: -1
      input_map {{ key: "features" value: "doubled" }} output_map {{ key: "scores" value: "out" }} }}
  ]
}}
{extra}'''


def repository(root: Path, config: str | None = None) -> tuple[Path, Path]:
    """The two step models and the ensemble (its version folder empty, as Triton's)."""
    scale = save(root, "scale", scaler())
    classify = save(root, "classify", mlp())
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(config or pipeline())
    return scale, classify


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def v2(data: np.ndarray, name: str = "raw") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}]}


def expected(scale: Path, classify: Path, data: np.ndarray) -> np.ndarray:
    scaled = reference(scale, {"x": data})["scaled"]
    return reference(classify, {"features": scaled})["scores"]


async def test_an_ensemble_answers_as_its_steps_run_in_turn(tmp_path: Path) -> None:
    scale, classify = repository(tmp_path)
    data = rows(3)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/pipeline/infer", json=v2(data))
        together = await asyncio.gather(*(client.post("/v2/models/pipeline/infer", json=v2(rows(1, seed)))
                                          for seed in range(8)))
        metadata = (await client.get("/v2/models/pipeline")).json()
        config = (await client.get("/v2/models/pipeline/config")).json()
        ready = await client.get("/v2/models/pipeline/ready")
        stats = (await client.get("/v2/models/pipeline/stats")).json()["model_stats"][0]["inference_stats"]
        step_stats = (await client.get("/v2/models/classify/stats")).json()["model_stats"][0]["inference_stats"]
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    assert (out["name"], out["shape"]) == ("out", [3, 3])
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 3), expected(scale, classify, data), rtol=1e-5)
    for seed, response in enumerate(together):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["outputs"][0]["data"],
                                   expected(scale, classify, rows(1, seed)).ravel(), rtol=1e-5)
    assert ready.status_code == 200
    assert metadata["platform"] == "ensemble"
    assert metadata["inputs"] == [{"name": "raw", "datatype": "FP32", "shape": [-1, 4]}]
    assert config["platform"] == "ensemble"
    assert config["max_batch_size"] == 8
    assert config["ensemble_scheduling"]["step"][0] == {"model_name": "scale", "model_version": -1,
                                                         "input_map": {"x": "raw"}, "output_map": {"scaled": "doubled"}}
    assert "dynamic_batching" not in config
    # the ensemble counts its requests; each step's model counts the requests its step sent it
    assert stats["success"]["count"] == 9
    assert stats["fail"]["count"] == 0
    # one queue and compute entry per request, its steps' added up (perf_analyzer reads these)
    assert stats["queue"]["count"] == stats["compute_infer"]["count"] == stats["compute_input"]["count"] == 9
    assert step_stats["success"]["count"] == 9


async def test_steps_that_take_the_same_tensors_run_side_by_side(tmp_path: Path) -> None:
    """Two classifiers on the scaled rows (one wave), their scores both answered."""
    scale, classify = repository(tmp_path, pipeline().replace(
        'output [ { name: "out" data_type: TYPE_FP32 dims: [ 3 ] } ]',
        'output [ { name: "out" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "again" data_type: TYPE_FP32 dims: [ 3 ] } ]'
    ).replace('''  ]
}''', ''',
    { model_name: "classify" input_map { key: "features" value: "doubled" }
      output_map { key: "scores" value: "again" } }
  ]
}'''))
    data = rows(2)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/pipeline/infer", json=v2(data))
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer.json()["outputs"]}
    np.testing.assert_allclose(outputs["out"], expected(scale, classify, data), rtol=1e-5)
    np.testing.assert_allclose(outputs["again"], outputs["out"])


async def test_an_ensemble_whose_step_model_is_missing_is_not_ready_and_says_why(tmp_path: Path) -> None:
    repository(tmp_path)
    async with serving(model_dir=tmp_path, model_control_mode="explicit", load_model=["scale", "pipeline"],
                       admin_token=TOKEN) as client:
        # explicit mode: loading the ensemble loaded its steps' models too, as Triton does
        answered = await client.post("/v2/models/pipeline/infer", json=v2(rows(1)))
        assert answered.status_code == 200, answered.text
        assert (await client.post("/v2/repository/models/classify/unload", headers=ADMIN)).status_code == 200
        ready = await client.get("/v2/models/pipeline/ready")
        server_ready = await client.get("/v2/health/ready")
        refused = await client.post("/v2/models/pipeline/infer", json=v2(rows(1)))
        listed = await index(client)
        reloaded = await client.post("/v2/repository/models/pipeline/load", headers=ADMIN)
        again = await client.post("/v2/models/pipeline/infer", json=v2(rows(1)))
    assert ready.status_code == 503
    assert "ensemble 'pipeline' is not ready: step 1: model 'classify' is not being served" in ready.json()["error"]
    assert server_ready.status_code == 503  # a model that should be served is not
    assert refused.status_code == 503
    assert listed[("pipeline", "1")]["state"] == "READY"  # loaded; its readiness is its steps'
    assert listed[("pipeline", "1")]["reason"].startswith("not ready: ensemble 'pipeline' is not ready: step 1")
    assert reloaded.status_code == 200, reloaded.text
    assert again.status_code == 200, again.text


async def test_a_step_whose_model_takes_other_tensors_is_named(tmp_path: Path) -> None:
    repository(tmp_path, pipeline().replace('key: "features" value: "doubled"', 'key: "inputs" value: "doubled"'))
    async with serving(model_dir=tmp_path) as client:
        ready = await client.get("/v2/models/pipeline/ready")
        refused = await client.post("/v2/models/pipeline/infer", json=v2(rows(1)))
    assert ready.status_code == 503
    assert ("step 1: model 'classify' takes inputs ['features'] and gives outputs ['scores']; the step gives it "
            "['inputs'] and takes ['scores']") in ready.json()["error"]
    assert refused.status_code == 503


async def test_a_client_mistake_is_the_ensembles_400(tmp_path: Path) -> None:
    repository(tmp_path)
    async with serving(model_dir=tmp_path) as client:
        wrong = await client.post("/v2/models/pipeline/infer", json=v2(rows(1), name="x"))
        too_wide = await client.post("/v2/models/pipeline/infer", json=v2(np.zeros((1, 5), np.float32)))
    assert wrong.status_code == 400
    assert "raw" in wrong.json()["error"]
    assert too_wide.status_code == 400, too_wide.text


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.replace('value: "doubled" }} output_map', 'value: "nothing" }} output_map')
     .replace('key: "features" value: "doubled"', 'key: "features" value: "nothing"'),
     "takes ['nothing']: neither an ensemble input nor any step's output"),
    (lambda c: c.replace('key: "scores" value: "out"', 'key: "scores" value: "doubled"'),
     "made by two steps"),
    (lambda c: c.replace('model_name: "scale"', 'model_name: "pipeline"'), "runs the ensemble itself"),
])
async def test_an_ensemble_that_could_never_answer_is_refused_with_why(tmp_path: Path, edit: Any, message: str) -> None:
    repository(tmp_path, edit(pipeline()))
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        listed = await index(client)
        refused = await client.post("/v2/models/pipeline/infer", json=v2(rows(1)))
    assert listed[("pipeline", "1")]["state"] == "UNAVAILABLE"
    assert message in listed[("pipeline", "1")]["reason"], listed[("pipeline", "1")]["reason"]
    assert refused.status_code == 503


def test_triton_fields_an_ensemble_cannot_have_are_refused() -> None:
    with pytest.raises(FactsError, match="model_namespace"):
        from_triton_text(pipeline().replace('model_name: "scale"', 'model_name: "scale" model_namespace: "a"'),
                         "pipeline", "config.pbtxt")
    with pytest.raises(FactsError, match="declares its inputs"):
        from_triton_text('platform: "ensemble" ensemble_scheduling { step [ { model_name: "a" } ] }', "e", "c")
    with pytest.raises(FactsError, match=r"tensors \['raw'\]: an ensemble's tensors are not reshaped"):
        from_triton_text(pipeline().replace("dims: [ 4 ]", "dims: [ 4 ] reshape { shape: [ 2, 2 ] }"),
                         "pipeline", "config.pbtxt")
    facts = from_triton_text(pipeline(extra='instance_group [ { count: 2 } ]'), "pipeline", "config.pbtxt")
    assert facts.ensemble is not None
    assert facts.ensemble[0].version is None
    assert "instance_group" in facts.ignored


def test_waves_run_each_step_once_what_it_takes_exists() -> None:
    steps = [EnsembleStep(model="c", inputs={"i": "ab"}, outputs={"o": "out"}),
             EnsembleStep(model="a", inputs={"i": "in"}, outputs={"o": "a"}),
             EnsembleStep(model="b", inputs={"i": "in", "j": "a"}, outputs={"o": "ab"}),
             EnsembleStep(model="d", inputs={"i": "in"}, outputs={"o": "d"})]
    assert waves(steps, ["in"], ["out"]) == [[1, 3], [2], [0]]
    with pytest.raises(ValueError, match="in a cycle"):
        waves([EnsembleStep(model="a", inputs={"i": "in", "j": "y"}, outputs={"o": "x"}),
               EnsembleStep(model="b", inputs={"i": "x"}, outputs={"o": "y"})], ["in"], ["x"])
    with pytest.raises(ValueError, match=r"ensemble inputs \['unused'\] are taken by no step"):
        waves(steps, ["in", "unused"], ["out"])
    with pytest.raises(ValueError, match="made by no step"):
        waves(steps, ["in"], ["out", "z"])



async def test_grpc_clients_see_an_ensemble_as_triton_shows_one(tmp_path: Path) -> None:
    from tritonclient.grpc import service_pb2 as pb

    scale, classify = repository(tmp_path)
    data = rows(2)
    async with serving_grpc(model_dir=tmp_path) as (_, stub, _app):
        request = pb.ModelInferRequest(model_name="pipeline")
        request.inputs.add(name="raw", datatype="FP32", shape=[2, 4])
        request.raw_input_contents.append(data.tobytes())
        answer = await stub.ModelInfer(request)
        config = (await stub.ModelConfig(pb.ModelConfigRequest(name="pipeline"))).config
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="pipeline"))
    scores = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 3)
    np.testing.assert_allclose(scores, expected(scale, classify, data), rtol=1e-5)
    assert (config.platform, metadata.platform) == ("ensemble", "ensemble")
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["scale", "classify"]
    assert dict(config.ensemble_scheduling.step[1].output_map) == {"scores": "out"}


async def test_an_ensemble_that_does_not_batch_gives_its_steps_its_whole_tensors(tmp_path: Path) -> None:
    """max_batch_size 0: the ensemble's [-1, 4] is one request's tensor, run by batching
    step models as one request of that many rows."""
    scale, classify = repository(tmp_path, pipeline(max_batch_size=0).replace("dims: [ 4 ]", "dims: [ -1, 4 ]")
                                 .replace("dims: [ 3 ]", "dims: [ -1, 3 ]"))
    data = rows(5)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/pipeline/infer", json=v2(data))
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    assert out["shape"] == [5, 3]
    np.testing.assert_allclose(np.array(out["data"]).reshape(5, 3), expected(scale, classify, data), rtol=1e-5)


async def test_a_step_runs_the_version_it_names_and_the_newest_where_it_names_none(tmp_path: Path) -> None:
    scale, classify = repository(tmp_path, pipeline(scale_version=1))
    tripled = save(tmp_path, "scale", scaler(3.0), version=2)
    (tmp_path / "scale" / "config.json").write_text('{"version_policy": {"kind": "all"}}')
    data = rows(1)
    async with serving(model_dir=tmp_path, admin_token=TOKEN, model_control_mode="explicit",
                       load_model=["*"]) as client:
        pinned = await client.post("/v2/models/pipeline/infer", json=v2(data))
        (tmp_path / "pipeline" / "config.pbtxt").write_text(pipeline())
        assert (await client.post("/v2/repository/models/pipeline/load", headers=ADMIN)).status_code == 200
        newest = await client.post("/v2/models/pipeline/infer", json=v2(data))
    np.testing.assert_allclose(pinned.json()["outputs"][0]["data"], expected(scale, classify, data).ravel(), rtol=1e-5)
    np.testing.assert_allclose(newest.json()["outputs"][0]["data"], expected(tripled, classify, data).ravel(),
                               rtol=1e-5)


def test_check_holds_an_ensembles_steps_against_the_models_it_checked(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    repository(tmp_path)
    assert model_tools.main(["check", str(tmp_path)]) == 0
    assert "pipeline/1: ok (an ensemble of scale, classify;" in capsys.readouterr().out
    (tmp_path / "pipeline" / "config.pbtxt").write_text(pipeline().replace('data_type: TYPE_FP32 dims: [ 3 ]',
                                                                           'data_type: TYPE_FP32 dims: [ 5 ]'))
    assert model_tools.main(["check", str(tmp_path)]) == 1
    assert ("pipeline version 1: not ready when served: step 1: model 'classify''s output 'scores' is FP32 [-1, 3], "
            "the ensemble's 'out' FP32 [-1, 5]") in capsys.readouterr().out


async def test_the_access_log_names_the_ensemble_with_its_steps_batches(tmp_path: Path) -> None:
    from tests.app.observability.test_access_log import Captured

    repository(tmp_path)
    captured, apps = Captured(), []
    async with serving(apps.append, model_dir=tmp_path, access_log=True, log_format="json") as client:
        captured.install(apps[0])
        answer = await client.post("/v2/models/pipeline/infer", json=v2(rows(1)))
    assert answer.status_code == 200
    (entry,) = captured.entries()
    assert (entry["model"], entry["version"], entry["batches"]) == ("pipeline", "1", 2)  # a batch per step
    assert entry["total_ms"] >= entry["compute_ms"] > 0


def passthrough(name: str, step: str) -> str:
    """An ensemble of one step: `step` on raw, its out as out."""
    return pipeline().replace('name: "pipeline"', f'name: "{name}"').split("ensemble_scheduling")[0] + (
        f'ensemble_scheduling {{ step [ {{ model_name: "{step}" input_map {{ key: "raw" value: "raw" }} '
        'output_map { key: "out" value: "out" } } ] }')


async def test_an_ensemble_may_run_an_ensemble_but_not_in_a_cycle(tmp_path: Path) -> None:
    scale, classify = repository(tmp_path)
    for name, step in (("outer", "pipeline"), ("ping", "pong"), ("pong", "ping")):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(passthrough(name, step))
    data = rows(2)
    async with serving(model_dir=tmp_path) as client:
        nested = await client.post("/v2/models/outer/infer", json=v2(data))
        ready = await client.get("/v2/models/ping/ready")
        refused = await client.post("/v2/models/ping/infer", json=v2(data))
    assert nested.status_code == 200, nested.text
    np.testing.assert_allclose(np.array(nested.json()["outputs"][0]["data"]).reshape(2, 3),
                               expected(scale, classify, data), rtol=1e-5)
    assert ready.status_code == 503
    assert "(a cycle)" in ready.json()["error"]
    assert refused.status_code == 503


@pytest.mark.server
def test_an_ensemble_loaded_and_unloaded_through_the_api_brings_its_steps_in_every_worker(tmp_path: Path) -> None:
    from tests.app.test_workers import reports

    scale, classify = repository(tmp_path / "models")
    control = tmp_path / "control"
    data = rows(1)
    args = ["--model-dir", str(tmp_path / "models"), "--workers", "2", "--model-control-mode", "explicit",
            "--admin-token", TOKEN, "--control-dir", str(control), "--no-warmup"]
    with ServerProcess(args) as server:
        loaded = httpx.post(f"{server.url}/v2/repository/models/pipeline/load", headers=ADMIN, timeout=120)
        assert loaded.status_code == 200, loaded.text
        serving_now = [sorted(r["serving"]) for r in reports(control).values()]
        # fresh connections: the kernel spreads them over both workers
        answers = [httpx.post(f"{server.url}/v2/models/pipeline/infer", json=v2(data), timeout=30) for _ in range(16)]
        unloaded = httpx.post(f"{server.url}/v2/repository/models/pipeline/unload", headers=ADMIN, timeout=120,
                              json={"parameters": {"unload_dependents": True}})
        assert unloaded.status_code == 200, unloaded.text
        serving_after = [r["serving"] for r in reports(control).values()]
    assert serving_now == [["classify", "pipeline", "scale"]] * 2
    assert serving_after == [{}, {}]  # the steps too, in both workers
    assert [a.status_code for a in answers] == [200] * 16
    np.testing.assert_allclose(answers[-1].json()["outputs"][0]["data"], expected(scale, classify, data).ravel(),
                               rtol=1e-5)


async def test_an_ensemble_with_the_response_cache_answers_a_repeated_input_without_its_steps(tmp_path: Path) -> None:
    scale, classify = repository(tmp_path, pipeline(extra="response_cache { enable: true }"))
    data = rows(1)
    async with serving(model_dir=tmp_path, response_cache_bytes=1 << 20) as client:
        # kept the second time its inputs come, answered from the cache the third
        answers = [await client.post("/v2/models/pipeline/infer", json=v2(data)) for _ in range(3)]
        stats = (await client.get("/v2/models/pipeline/stats")).json()["model_stats"][0]["inference_stats"]
        step = (await client.get("/v2/models/scale/stats")).json()["model_stats"][0]["inference_stats"]
        config = (await client.get("/v2/models/pipeline/config")).json()
    assert [a.status_code for a in answers] == [200] * 3
    assert answers[2].json()["outputs"] == answers[0].json()["outputs"]
    np.testing.assert_allclose(answers[2].json()["outputs"][0]["data"], expected(scale, classify, data).ravel(),
                               rtol=1e-5)
    assert (stats["cache_hit"]["count"], stats["cache_miss"]["count"], stats["success"]["count"]) == (1, 2, 3)
    assert step["success"]["count"] == 2  # the hit ran no step
    assert config["response_cache"] == {"enable": True}


def two_inputs(op: str) -> Any:
    """A [4] and B [4] -> A op B [4]: no batch axis, as a user's small model declares it."""
    return helper.make_graph([helper.make_node(op, ["INPUT0", "INPUT1"], ["OUT"])], op.lower(),
                             [helper.make_tensor_value_info(n, FLOAT, [4]) for n in ("INPUT0", "INPUT1")],
                             [helper.make_tensor_value_info("OUT", FLOAT, [4])])


ADD_SUB = '''
name: "add_sub"
platform: "ensemble"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "add" model_version: 1 input_map { key: "INPUT0" value: "INPUT0" } input_map { key: "INPUT1" value: "INPUT1" }
    output_map { key: "OUT" value: "OUTPUT0" } },
  { model_name: "sub" model_version: 1 input_map { key: "INPUT0" value: "INPUT0" } input_map { key: "INPUT1" value: "INPUT1" }
    output_map { key: "OUT" value: "OUTPUT1" } } ] }
'''


async def test_an_ensemble_as_triton_s_quick_start_writes_one_runs_its_steps_side_by_side(tmp_path: Path) -> None:
    """No max_batch_size: no batch axis anywhere; both steps take both inputs (one wave), with
    tritonclient's HTTP client as its users call it."""
    import tritonclient.http as triton_http

    save(tmp_path, "add", two_inputs("Add"))
    save(tmp_path, "sub", two_inputs("Sub"))
    (tmp_path / "add_sub" / "1").mkdir(parents=True)
    (tmp_path / "add_sub" / "config.pbtxt").write_text(ADD_SUB)
    a, b = rows(1, 1)[0], rows(1, 2)[0]
    inputs = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        tensor = triton_http.InferInput(name, [4], "FP32")
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    body, header_length = triton_http.InferenceServerClient.generate_request_body(inputs)
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/add_sub/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    result = triton_http.InferenceServerClient.parse_response_body(
        answer.content, header_length=int(answer.headers.get("inference-header-content-length", 0)) or None)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


CONFIG_JSON = {
    "inputs": [{"name": "raw", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "out", "datatype": "FP32", "shape": [-1, 3]}],
    "batching": {"max_batch_size": 8},
    "ensemble": [{"model": "scale", "inputs": {"x": "raw"}, "outputs": {"scaled": "doubled"}},
                 {"model": "classify", "inputs": {"features": "doubled"}, "outputs": {"scores": "out"}}]}


@pytest.mark.parametrize("written_as", ["config.json", "manifest.json"])
async def test_an_ensemble_said_in_a_config_json_or_a_manifest_serves_as_a_config_pbtxt_s(
        tmp_path: Path, written_as: str) -> None:
    scale, classify = repository(tmp_path)
    (tmp_path / "pipeline" / "config.pbtxt").unlink()
    if written_as == "config.json":
        (tmp_path / "pipeline" / "config.json").write_text(json.dumps(CONFIG_JSON))
    else:
        write_manifest(tmp_path / "pipeline" / "1", Manifest(
            name="pipeline", version=1, task="tensors", inputs=CONFIG_JSON["inputs"], outputs=CONFIG_JSON["outputs"],
            batching={"max_batch_size": 8, "max_queue_delay_ms": 0}, ensemble=CONFIG_JSON["ensemble"]))
    data = rows(2)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/pipeline/infer", json=v2(data))
        config = (await client.get("/v2/models/pipeline/config")).json()
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(2, 3),
                               expected(scale, classify, data), rtol=1e-5)
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["scale", "classify"]


def test_a_step_s_error_is_said_to_be_the_step_s_without_changing_the_one_others_got() -> None:
    shared = QueueFull("model 'scale' has 4 requests queued; retry later", retry_after_s=3)
    said = _said_of(shared, "ensemble 'pipeline', step 0 (model 'scale')")
    assert isinstance(said, QueueFull)
    assert (said.message, said.retry_after_s, said.headers) == (
        "ensemble 'pipeline', step 0 (model 'scale'): model 'scale' has 4 requests queued; retry later", 3,
        {"Retry-After": "3"})
    assert shared.message == "model 'scale' has 4 requests queued; retry later"  # a batch's other requests' error


async def test_unload_dependents_unloads_an_ensembles_steps_but_one_another_ensemble_runs(tmp_path: Path) -> None:
    """Triton's unload_dependents, as tritonclient sends it over HTTP and gRPC; without it an
    ensemble's unload leaves its step models served (Triton's default too)."""
    from tritonclient.grpc import service_pb2 as pb

    repository(tmp_path)
    (tmp_path / "again" / "1").mkdir(parents=True)  # a second ensemble, running only the classifier
    (tmp_path / "again" / "config.pbtxt").write_text(pipeline().replace('name: "pipeline"', 'name: "again"').replace(
        '''{ model_name: "scale" model_version: -1
      input_map { key: "x" value: "raw" } output_map { key: "scaled" value: "doubled" } },
    { model_name: "classify" model_version: -1
      input_map { key: "features" value: "doubled" }''', '''{ model_name: "classify" model_version: -1
      input_map { key: "features" value: "raw" }'''))
    async with serving_grpc(model_dir=tmp_path, model_control_mode="explicit", load_model=["pipeline", "again"],
                            admin_token=TOKEN) as (client, stub, _app):
        async def served() -> set[str]:
            return {n for (n, _), e in (await index(client)).items() if e["state"] == "READY"}

        before = await served()
        bad = await client.post("/v2/repository/models/pipeline/unload", headers=ADMIN,
                                json={"parameters": {"unload_dependents": "yes"}})
        kept = await client.post("/v2/repository/models/pipeline/unload", headers=ADMIN,
                                 json={"parameters": {"unload_dependents": False}})
        after_plain = await served()
        assert (await client.post("/v2/repository/models/pipeline/load", headers=ADMIN)).status_code == 200
        cascaded = await client.post("/v2/repository/models/pipeline/unload", headers=ADMIN,
                                     json={"parameters": {"unload_dependents": True}})
        after_http = await served()
        request = pb.RepositoryModelUnloadRequest(model_name="again")
        request.parameters["unload_dependents"].bool_param = True
        await stub.RepositoryModelUnload(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
        after_grpc = await served()
    assert before == {"pipeline", "again", "scale", "classify"}
    assert bad.status_code == 400
    assert "unload_dependents must be true or false" in bad.json()["error"]
    assert kept.status_code == 200
    assert after_plain == {"again", "scale", "classify"}
    assert cascaded.status_code == 200
    assert after_http == {"again", "classify"}  # "again" still runs the classifier
    assert after_grpc == set()


async def test_a_step_model_replaced_is_held_against_its_step_again(tmp_path: Path) -> None:
    """The tensors are checked once per set of step models (app/ensemble.py): a new version of
    one that no longer fits turns the ensemble not ready at once."""
    repository(tmp_path)
    async with serving(model_dir=tmp_path, model_control_mode="explicit", load_model=["pipeline"],
                       admin_token=TOKEN) as client:
        before = await client.get("/v2/models/pipeline/ready")
        save(tmp_path, "classify", scaler(), version=2)  # other tensors: x -> scaled
        assert (await client.post("/v2/repository/models/classify/load", headers=ADMIN)).status_code == 200
        after = await client.get("/v2/models/pipeline/ready")
    assert before.status_code == 200
    assert after.status_code == 503
    assert "step 1: model 'classify' takes inputs ['x']" in after.json()["error"]
