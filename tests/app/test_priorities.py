"""Triton's priority levels (dynamic_batching.priority_levels, default_priority_level,
priority_queue_policy; a request's `priority` parameter, Triton's schedule policy extension):
a request of a higher level (1 the highest) is batched before the queued requests of lower
ones, each level may bound its own queue, and a priority the model does not have is the
client's 400, over HTTP and gRPC alike."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from app.model_facts import FactsError, from_triton_text
from tests.app.conftest import serving, serving_grpc
from tests.app.onnx_models import mlp, save
from tests.app.test_queue_policy import WAITING, queued

# Batches of two rows that wait 300 ms for company: what is queued stays long enough to count.
LEVELS = ('platform: "onnxruntime_onnx"\nmax_batch_size: 2\n'
          'dynamic_batching { max_queue_delay_microseconds: 300000 priority_levels: 2 default_priority_level: 2 '
          'priority_queue_policy { key: 1 value { max_queue_size: 1 } } }\n')


def body(n_rows: int, seed: int = 0, priority: Any = None) -> dict[str, Any]:
    rows = np.random.default_rng(seed).standard_normal((n_rows, 4)).round(3)
    request: dict[str, Any] = {"inputs": [{"name": "features", "shape": [n_rows, 4], "datatype": "FP32",
                                           "data": rows.ravel().tolist()}]}
    if priority is not None:
        request["parameters"] = {"priority": priority}
    return request


def prioritised(root: Path, name: str = "ranked", config: str = LEVELS) -> None:
    save(root, name, mlp())
    (root / name / "config.pbtxt").write_text(config)


async def test_a_higher_priority_request_runs_before_those_queued_ahead_of_it(tmp_path: Path) -> None:
    from tests.app.observability.test_access_log import Captured

    prioritised(tmp_path)
    captured, apps = Captured(), []
    async with serving(apps.append, model_dir=tmp_path, access_log=True, log_format="json", **WAITING) as client:
        captured.install(apps[0])
        first = asyncio.create_task(client.post("/v2/models/ranked/infer", json=body(1),
                                                headers={"x-request-id": "default-level"}))
        await asyncio.wait_for(queued(client, "ranked", 1), 10)
        urgent = await client.post("/v2/models/ranked/infer", json=body(2, 1, priority=1),
                                   headers={"x-request-id": "urgent"})
        assert (await first).status_code == 200
    assert urgent.status_code == 200, urgent.text
    entries = {e["request_id"]: e for e in captured.entries() if e["request_id"]}
    batches = {name: (e["batch_id"], e["batch_rows"]) for name, e in entries.items()}
    # the level each was queued at, in its access-log line
    assert (entries["urgent"]["priority"], entries["default-level"]["priority"]) == (1, 2)
    # Without levels the queued row and the urgent request's first row would make one batch
    # (the urgent request split over two); with them the urgent one fills a batch by itself.
    assert batches["urgent"][1] == 2
    assert batches["default-level"][1] == 1
    assert batches["urgent"][0] < batches["default-level"][0]


async def test_a_level_bounds_its_own_queue_over_http_and_grpc(tmp_path: Path) -> None:
    from tritonclient.grpc import service_pb2 as pb

    prioritised(tmp_path)
    async with serving_grpc(model_dir=tmp_path, **WAITING) as (client, stub, _):
        waiting = asyncio.create_task(client.post("/v2/models/ranked/infer", json=body(1, priority=1)))
        await asyncio.wait_for(queued(client, "ranked", 1), 10)
        refused = await client.post("/v2/models/ranked/infer", json=body(1, priority=1))
        request = pb.ModelInferRequest(model_name="ranked", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="features", datatype="FP32", shape=[1, 4])], raw_input_contents=[np.zeros(4, np.float32).tobytes()])
        request.parameters["priority"].uint64_param = 1  # as tritonclient.grpc's infer(priority=1) sends it
        with pytest.raises(grpc.aio.AioRpcError) as refused_grpc:
            await stub.ModelInfer(request)
        lower = await client.post("/v2/models/ranked/infer", json=body(1))  # level 2 has no bound of its own
        assert (await waiting).status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"] == ("model 'ranked' has 1 requests of priority 1 queued, its queue policy's "
                                       "max_queue_size; retry later")
    assert refused_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_grpc.value.details() == refused.json()["error"]
    assert lower.status_code == 200, lower.text


async def test_a_priority_the_model_does_not_have_is_the_clients_mistake(tmp_path: Path) -> None:
    from tritonclient.grpc import service_pb2 as pb

    prioritised(tmp_path)
    save(tmp_path, "plain", mlp())  # no levels: any priority is its one level, as Triton serves it
    async with serving_grpc(model_dir=tmp_path) as (client, stub, _):
        answers = {repr(priority): await client.post("/v2/models/ranked/infer", json=body(1, priority=priority))
                   for priority in (0, 1, 2, 3, -1, "high", True)}  # (by repr: True == 1 as a key)
        plain = await client.post("/v2/models/plain/infer", json=body(1, priority=7))
        request = pb.ModelInferRequest(model_name="ranked", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="features", datatype="FP32", shape=[1, 4])], raw_input_contents=[np.zeros(4, np.float32).tobytes()])
        request.parameters["priority"].int64_param = 3
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(request)
        metadata = (await client.get("/v2")).json()
    assert [answers[p].status_code for p in ("0", "1", "2")] == [200, 200, 200]
    assert answers["3"].json()["error"] == ("parameters.priority 3: model 'ranked' has priority levels 1 (the highest) "
                                          "to 2; 0 or none is its default, 2")
    for wrong in ("-1", "'high'", "True"):
        assert answers[wrong].status_code == 400
        assert answers[wrong].json()["error"].startswith("parameters.priority must be a whole number, 0 or more")
    assert plain.status_code == 200, plain.text
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == answers["3"].json()["error"]
    assert "schedule_policy" in metadata["extensions"]


async def test_the_configuration_says_its_levels_back_as_triton_does(tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2
    from tritonclient.grpc import service_pb2 as pb

    prioritised(tmp_path)
    async with serving_grpc(model_dir=tmp_path) as (client, stub, _):
        config = (await client.get("/v2/models/ranked/config")).json()
        over_grpc = await stub.ModelConfig(pb.ModelConfigRequest(name="ranked"))
    dynamic = config["dynamic_batching"]
    assert (dynamic["priority_levels"], dynamic["default_priority_level"]) == (2, 2)
    assert dynamic["priority_queue_policy"] == {"1": {"timeout_action": "REJECT", "default_timeout_microseconds": 0,
                                                      "allow_timeout_override": True, "max_queue_size": 1}}
    assert "ignored" not in config["parameters"]
    said: model_config_pb2.ModelConfig = over_grpc.config
    assert said.dynamic_batching.priority_levels == 2
    assert said.dynamic_batching.priority_queue_policy[1].max_queue_size == 1


async def test_a_config_json_gives_the_same_levels(tmp_path: Path) -> None:
    save(tmp_path, "ranked", mlp())
    (tmp_path / "ranked" / "config.json").write_text(json.dumps({"batching": {
        "max_batch_size": 2, "max_queue_delay_ms": 300,
        "priorities": {"levels": 2, "default_level": 2, "queues": {"1": {"max_requests": 1}}}}}))
    async with serving(model_dir=tmp_path, **WAITING) as client:
        waiting = asyncio.create_task(client.post("/v2/models/ranked/infer", json=body(1, priority=1)))
        await asyncio.wait_for(queued(client, "ranked", 1), 10)
        refused = await client.post("/v2/models/ranked/infer", json=body(1, priority=1))
        assert (await waiting).status_code == 200
        config = (await client.get("/v2/models/ranked/config")).json()
    assert refused.status_code == 503
    assert config["dynamic_batching"]["priority_levels"] == 2


async def test_an_ensemble_passes_its_requests_priority_to_its_steps(tmp_path: Path) -> None:
    prioritised(tmp_path)
    (tmp_path / "wrapped" / "1").mkdir(parents=True)
    (tmp_path / "wrapped" / "config.pbtxt").write_text(
        'name: "wrapped"\nplatform: "ensemble"\nmax_batch_size: 2\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "ranked" model_version: -1 '
        'input_map { key: "features" value: "x" } output_map { key: "scores" value: "y" } } ] }\n')
    request = body(1, priority=1)
    request["inputs"][0]["name"] = "x"
    async with serving(model_dir=tmp_path) as client:
        served = await client.post("/v2/models/wrapped/infer", json=request)
        request["parameters"]["priority"] = 5
        refused = await client.post("/v2/models/wrapped/infer", json=request)
    assert served.status_code == 200, served.text
    assert refused.status_code == 400
    assert refused.json()["error"] == ("ensemble 'wrapped', step 0 (model 'ranked'): parameters.priority 5: model "
                                       "'ranked' has priority levels 1 (the highest) to 2; 0 or none is its default, 2")


@pytest.mark.parametrize(("dynamic", "message"), [
    ("priority_levels: 2 default_priority_level: 3", "default_level 3 is not one of the levels 1 to 2"),
    ("priority_levels: 2", "default_level"),  # Triton's rule: a default among the levels
    ("priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 4 value { max_queue_size: 1 } }",
     "queues for levels [4]: the levels are 1 to 2"),
    ("default_priority_level: 1", "without priority_levels"),
])
def test_levels_triton_would_refuse_are_refused_with_why(dynamic: str, message: str) -> None:
    config = f'max_batch_size: 4\ndynamic_batching {{ {dynamic} }}\n'
    with pytest.raises(FactsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_triton_text(config, "m", "config.pbtxt")


def test_a_levels_own_policy_is_read_whole() -> None:
    facts = from_triton_text(
        'max_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy '
        '{ key: 2 value { timeout_action: DELAY default_timeout_microseconds: 1000 max_queue_size: 5 } } }\n',
        "m", "config.pbtxt")
    assert facts.batching is not None
    assert facts.batching.priorities is not None
    level = facts.batching.priorities.queues[2]
    assert (level.max_requests, level.timeout_ms, level.timeout_action) == (5, 1, "delay")
    assert not facts.ignored


async def test_a_level_without_its_own_policy_has_the_models(tmp_path: Path) -> None:
    prioritised(tmp_path, config=LEVELS.replace("priority_queue_policy { key: 1 value { max_queue_size: 1 } }",
                                                "default_queue_policy { max_queue_size: 1 }"))
    async with serving(model_dir=tmp_path, **WAITING) as client:
        waiting = asyncio.create_task(client.post("/v2/models/ranked/infer", json=body(1)))
        await asyncio.wait_for(queued(client, "ranked", 1), 10)
        same_level = await client.post("/v2/models/ranked/infer", json=body(1, priority=2))
        other_level = asyncio.create_task(client.post("/v2/models/ranked/infer", json=body(1, priority=1)))
        answers = await asyncio.gather(waiting, other_level)
    assert same_level.status_code == 503
    assert "has 1 requests of priority 2 queued" in same_level.json()["error"]
    assert [a.status_code for a in answers] == [200, 200]


def test_levels_of_a_model_that_does_not_batch_are_named_as_ignored() -> None:
    facts = from_triton_text('max_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
                             'dynamic_batching { priority_levels: 2 default_priority_level: 1 }\n', "m", "config.pbtxt")
    assert facts.batching is not None
    assert facts.batching.priorities is None
    assert "max_batch_size 0" in facts.ignored["dynamic_batching"]


async def test_a_traced_requests_queue_span_says_its_level(tmp_path: Path) -> None:
    from tests.app.observability.test_tracing import Recorded

    prioritised(tmp_path)
    recorded, apps = Recorded(), []
    async with serving(apps.append, model_dir=tmp_path, tracing=True) as client:
        recorded.install(apps[0])
        answer = await client.post("/v2/models/ranked/infer", json=body(1, priority=1))
    assert answer.status_code == 200, answer.text
    [request] = recorded.requests()
    queue = recorded.children(request)["queue"]
    assert dict(queue.attributes or {})["priority"] == 1


async def test_a_priority_the_model_lacks_is_refused_even_where_the_answer_is_cached(tmp_path: Path) -> None:
    prioritised(tmp_path, config=LEVELS + "response_cache { enable: true }\n")
    async with serving(model_dir=tmp_path, response_cache_bytes=1 << 20) as client:
        # kept the second time its input comes, answered from the cache the third
        answers = [await client.post("/v2/models/ranked/infer", json=body(1, priority=p)) for p in (1, 1, 1, 3)]
        stats = (await client.get("/v2/models/ranked/stats")).json()["model_stats"][0]["inference_stats"]
    assert [a.status_code for a in answers] == [200, 200, 200, 400]
    assert stats["cache_hit"]["count"] == 1
    assert "parameters.priority 3" in answers[3].json()["error"]
