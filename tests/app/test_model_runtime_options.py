"""A model's own ONNX Runtime options: Triton's optimization.graph.level and the ONNX Runtime
parameters its backend reads from a config.pbtxt, `onnxruntime` in a config.json, a load's
configuration or an imported model's manifest. Each one given is what the model's sessions
are made with (read back from ONNX Runtime itself); the rest stay the server's. Values Triton
would not take are among tests/app/test_model_facts.py's refused configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from app.manifest import ModelRuntimeOptions, load_manifest
from app.model_facts import from_triton, from_triton_text
from app.runtime import OrtOptions
from app.served_model import ServedModel
from load_tests.server import ROOT
from tests.app.conftest import serving, serving_grpc
from tests.app.onnx_models import mlp, reference, save

TOKEN = "session-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

TUNED = """
max_batch_size: 8
dynamic_batching { }
optimization { graph { level: 2 } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "inter_op_thread_count" value: { string_value: "3" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
parameters { key: "enable_mem_arena" value: { string_value: "0" } }
parameters { key: "enable_mem_pattern" value: { string_value: "false" } }
"""


def features(rows: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, 4)).astype(np.float32)


def v2(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def served(client: Any, name: str) -> ServedModel:
    model: ServedModel = client._transport.app.services.repository.get(name)
    return model


def options_of(model: ServedModel) -> ort.SessionOptions:
    return model.session.session.get_session_options()


async def test_a_triton_configurations_onnx_runtime_options_make_the_models_session(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", mlp())
    (tmp_path / "mlp" / "config.pbtxt").write_text(TUNED)
    x = features(3)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post("/v2/models/mlp/infer", json=v2(x))
        config = (await client.get("/v2/models/mlp/config")).json()
        model = served(client, "mlp")
        options = options_of(model)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], reference(path, {"features": x})["scores"].ravel(),
                               rtol=1e-6)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 3
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    assert options.enable_mem_pattern is False
    assert model.session.wide is None  # its threads are its own: no wide session beside them
    # /config says it back in Triton's words, and they read back as the same options
    assert config["optimization"] == {"graph": {"level": 2}}
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert {k: parameters[k] for k in ("intra_op_thread_count", "inter_op_thread_count", "execution_mode",
                                       "enable_mem_arena", "enable_mem_pattern")} == {
        "intra_op_thread_count": "2", "inter_op_thread_count": "3", "execution_mode": "1",
        "enable_mem_arena": "false", "enable_mem_pattern": "false"}
    assert "ignored" not in parameters
    read_back = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    said = from_triton(read_back, "mlp", "/config", None).onnxruntime
    assert said is not None
    # its instance_group says the instances the server runs: the server's one, where the model sets none
    assert said.model_copy(update={"instances": None}) == model.manifest.onnxruntime
    assert said.instances == config["instance_group"][0]["count"] == model.policy.concurrent_batches == 1


async def test_options_left_out_stay_the_servers(tmp_path: Path) -> None:
    save(tmp_path, "plain", mlp())
    save(tmp_path, "basic", mlp())
    (tmp_path / "basic" / "config.pbtxt").write_text("optimization { graph { level: -1 } }")
    async with serving(model_dir=tmp_path, intra_op_threads=1) as client:
        plain, basic = options_of(served(client, "plain")), options_of(served(client, "basic"))
        config = (await client.get("/v2/models/plain/config")).json()
    assert plain.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert basic.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for options in (plain, basic):
        assert options.intra_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.enable_cpu_mem_arena is True
    assert "optimization" not in config
    assert "intra_op_thread_count" not in config["parameters"]


def test_a_model_that_sets_its_threads_gets_no_wide_session() -> None:
    server = OrtOptions(["CPUExecutionProvider"], intra_op_threads=1, wide_threads=4)
    assert server.for_model(None) is server
    graph_only = server.for_model(ModelRuntimeOptions(graph_optimization="basic"))
    assert (graph_only.intra_op_threads, graph_only.wide_threads) == (1, 4)
    threads = server.for_model(ModelRuntimeOptions(intra_op_threads=3))
    assert (threads.intra_op_threads, threads.wide_threads) == (3, 0)


def test_the_backends_other_parameters_and_optimizations_are_named_as_ignored() -> None:
    facts = from_triton_text(
        'optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }\n'
        'parameters { key: "gpu_mem_limit" value: { string_value: "4294967200" } }\n'
        'parameters { key: "my_flag" value: { string_value: "1" } }\n'
        'parameters { key: "intra_op_thread_count" value: { string_value: "0" } }\n', "m", "m/config.pbtxt")
    assert facts.onnxruntime is None  # a thread count of 0 is the server's choice, as it is Triton's ORT's
    assert facts.ignored == {
        "optimization.execution_accelerators": "execution providers are the server's: --providers",
        "parameters.gpu_mem_limit": "CUDA options are the server's",
        "parameters.my_flag": "not an ONNX Runtime option this server reads"}


async def test_config_json_and_a_loads_configuration_set_them_too(tmp_path: Path) -> None:
    save(tmp_path, "mlp", mlp())
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"onnxruntime": {"graph_optimization": "extended"}}))
    override = json.dumps({"optimization": {"graph": {"level": -1}},
                           "parameters": {"enable_mem_pattern": {"string_value": "0"}}})
    async with serving(model_dir=tmp_path, admin_token=TOKEN, model_control_mode="explicit",
                       load_model=["mlp"]) as client:
        from_file = options_of(served(client, "mlp"))
        loaded = await client.post("/v2/repository/models/mlp/load", headers=ADMIN,
                                   json={"parameters": {"config": override}})
        from_load = options_of(served(client, "mlp"))
        refused = await client.post("/v2/repository/models/mlp/load", headers=ADMIN, json={"parameters": {
            "config": json.dumps({"parameters": {"gpu_mem_limit": {"string_value": "1"}}})}})
    assert from_file.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert loaded.status_code == 200, loaded.text
    assert from_load.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert from_load.enable_mem_pattern is False
    assert refused.status_code == 400  # a load's configuration is applied whole or refused
    assert "['parameters.gpu_mem_limit'] are not supported in a load's configuration" in refused.json()["error"]


async def test_a_config_json_option_it_does_not_know_is_refused(tmp_path: Path) -> None:
    save(tmp_path, "mlp", mlp())
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"onnxruntime": {"threads": 2}}))
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        (entry,) = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    assert entry["state"] == "UNAVAILABLE"
    assert "onnxruntime.threads: Extra inputs are not permitted" in entry["reason"]


async def test_an_imported_models_options_are_kept_in_its_manifest_and_served(tmp_path: Path) -> None:
    source = save(tmp_path / "mine", "mlp", mlp())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"onnxruntime": {"graph_optimization": "basic", "intra_op_threads": 2}}))
    models = tmp_path / "models"
    imported = subprocess.run([sys.executable, "-m", "app", "import", str(source), "--name", "mlp", "--config",
                               str(config), "--model-dir", str(models)],
                              capture_output=True, text=True, cwd=ROOT, timeout=180, check=False)
    assert imported.returncode == 0, imported.stderr
    assert "onnxruntime: graph_optimization basic, intra_op_threads 2" in imported.stdout
    assert load_manifest(models / "mlp" / "1").onnxruntime == ModelRuntimeOptions(graph_optimization="basic",
                                                                               intra_op_threads=2)
    async with serving(model_dir=models) as client:
        options = options_of(served(client, "mlp"))
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 2


async def test_grpcs_model_config_says_them_too(tmp_path: Path) -> None:
    save(tmp_path, "mlp", mlp())
    (tmp_path / "mlp" / "config.pbtxt").write_text(TUNED)
    async with serving_grpc(model_dir=tmp_path) as (_, stub, _app):
        answer = await stub.ModelConfig(service_pb2.ModelConfigRequest(name="mlp"))
    assert answer.config.optimization.graph.level == 2
    assert answer.config.parameters["execution_mode"].string_value == "1"
