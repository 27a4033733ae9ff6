"""A model's own queue bounds (Triton's dynamic_batching.default_queue_policy, or a
config.json's batching.queue): at most so many requests queued, and a request refused once
it has waited past a timeout, each a 503 with Retry-After, as the server's own bounds are."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.model_facts import from_triton_text
from tests.app.conftest import serving
from tests.app.onnx_models import mlp, save

# Batches wait 300 ms for company, idle or not: requests stay queued long enough to count.
WAITING = {"max_queue_delay_ms": 300, "idle_dispatch": False}


def config_pbtxt(queue_policy: str) -> str:
    return ('platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            f'dynamic_batching {{ max_queue_delay_microseconds: 300000 default_queue_policy {{ {queue_policy} }} }}\n')


def body(seed: int) -> dict[str, Any]:
    rows = np.random.default_rng(seed).standard_normal((1, 4)).round(3)
    return {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]}


async def queued(client: httpx.AsyncClient, model: str, rows: int) -> None:
    while f'ortserve_queue_depth{{model="{model}"}} {rows}.0' not in (await client.get("/metrics")).text:
        await asyncio.sleep(0.005)


async def test_a_model_queues_no_more_requests_than_its_policy_says(tmp_path: Path) -> None:
    save(tmp_path, "bounded", mlp())
    (tmp_path / "bounded" / "config.pbtxt").write_text(config_pbtxt("max_queue_size: 2"))
    async with serving(model_dir=tmp_path, retry_after_s=4, **WAITING) as client:
        waiting = [asyncio.create_task(client.post("/v2/models/bounded/infer", json=body(i))) for i in range(2)]
        await asyncio.wait_for(queued(client, "bounded", 2), 10)
        refused = await client.post("/v2/models/bounded/infer", json=body(2))
        answered = await asyncio.gather(*waiting)
        config = (await client.get("/v2/models/bounded/config")).json()
        stats = (await client.get("/v2/models/bounded/stats")).json()["model_stats"][0]["inference_stats"]
    assert refused.status_code == 503
    # refused before it was queued, as a full queue's refusals are: no inference failed
    assert (stats["fail"]["count"], stats["success"]["count"]) == (0, 2)
    assert refused.headers["retry-after"] == "4"
    assert refused.json()["error"] == ("model 'bounded' has 2 requests queued, its queue policy's max_queue_size; "
                                       "retry later")
    assert [r.status_code for r in answered] == [200, 200]  # nothing accepted is lost
    assert config["dynamic_batching"]["default_queue_policy"] == {
        "timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": True,
        "max_queue_size": 2}
    assert "ignored" not in config["parameters"]


async def test_a_request_waiting_past_the_queue_timeout_is_refused(tmp_path: Path) -> None:
    save(tmp_path, "impatient", mlp())
    (tmp_path / "impatient" / "config.pbtxt").write_text(config_pbtxt("default_timeout_microseconds: 50000"))
    save(tmp_path, "patient", mlp())  # DELAY: late, behind those that are not, but served
    (tmp_path / "patient" / "config.pbtxt").write_text(
        config_pbtxt("default_timeout_microseconds: 50000 timeout_action: DELAY"))
    async with serving(model_dir=tmp_path, **WAITING) as client:
        late, in_turn = await asyncio.gather(client.post("/v2/models/impatient/infer", json=body(0)),
                                             client.post("/v2/models/patient/infer", json=body(0)))
        stats = (await client.get("/v2/models/impatient/stats")).json()["model_stats"][0]["inference_stats"]
        patient = (await client.get("/v2/models/patient/config")).json()
    assert late.status_code == 503
    assert "in the queue of model 'impatient', past its queue policy's timeout of 50 ms" in late.json()["error"]
    assert stats["fail"]["count"] == 1
    assert in_turn.status_code == 200, in_turn.text
    assert patient["dynamic_batching"]["default_queue_policy"]["timeout_action"] == "DELAY"
    assert "ignored" not in patient["parameters"]


async def test_a_config_json_gives_the_same_bounds(tmp_path: Path) -> None:
    save(tmp_path, "mlp", mlp())
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"batching": {"queue": {"max_requests": 1}}}))
    async with serving(model_dir=tmp_path, **WAITING) as client:
        first = asyncio.create_task(client.post("/v2/models/mlp/infer", json=body(0)))
        await asyncio.wait_for(queued(client, "mlp", 1), 10)
        second = await client.post("/v2/models/mlp/infer", json=body(1))
        assert (await first).status_code == 200
    assert second.status_code == 503
    assert "has 1 requests queued" in second.json()["error"]


def test_a_policy_that_bounds_nothing_is_no_policy() -> None:
    facts = from_triton_text(config_pbtxt("allow_timeout_override: true"), "m", "config.pbtxt")
    assert facts.batching is not None
    assert facts.batching.queue is None
    bounded = from_triton_text(config_pbtxt("max_queue_size: 3 default_timeout_microseconds: 2500"), "m", "config.pbtxt")
    assert bounded.batching is not None
    assert bounded.batching.queue is not None
    assert (bounded.batching.queue.max_requests, bounded.batching.queue.timeout_ms) == (3, 2.5)
