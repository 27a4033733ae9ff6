"""A model's instances (Triton's instance_group): how many of its batches run at once. Read
from a config.pbtxt, a config.json's `onnxruntime.instances` or a load's configuration; each
worker runs its share on inference threads of its own, its ORT threads divided among them,
and /config says the count back. That two threads run two batches at once is
tests/app/batching/test_batcher.py's `test_two_inference_threads_run_two_batches_at_once`;
here, that a model's configuration gets it those threads."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.loading import batch_policy
from app.manifest import ModelRuntimeOptions, load_manifest
from app.model_facts import FactsError, from_triton_json, from_triton_text
from app.runtime import CPU, OrtOptions
from app.served_model import ServedModel
from app.settings import Settings
from tests.app.conftest import serving
from tests.app.onnx_models import lstm, reference, save
from tests.conftest import model_folder

TOKEN = "session-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
STEPS = 400  # a sequence long enough that a batch runs for a while: the next is handed over meanwhile


def batching(extra: str = "") -> str:
    return f"max_batch_size: 4\ndynamic_batching {{ }}\n{extra}\n"


def sequences(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, STEPS, 3)).astype(np.float32)


def v2(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "steps", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def served(client: Any, name: str) -> ServedModel:
    model: ServedModel = client._transport.app.services.repository.get(name)
    return model


def inference_threads(name: str) -> int:
    """This model's inference threads alive now (the pool names them infer-<model>_<n>)."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(f"infer-{name}_"))


async def flooded(client: Any, name: str, path: Path) -> None:
    """32 requests at once, each answered as ONNX Runtime answers it alone."""
    inputs = [sequences(1, seed) for seed in range(32)]
    answers = await asyncio.gather(*(client.post(f"/v2/models/{name}/infer", json=v2(x)) for x in inputs))
    for x, answer in zip(inputs, answers, strict=True):
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], reference(path, {"steps": x})["last"].ravel(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("group", "threads"), [("instance_group [ { count: 2 kind: KIND_CPU } ]", 2), ("", 1)])
async def test_a_triton_instance_group_runs_that_many_batches_at_once(tmp_path: Path, group: str,
                                                                      threads: int) -> None:
    name = f"recurrent{threads}"
    path = save(tmp_path, name, lstm(hidden=32))
    (tmp_path / name / "config.pbtxt").write_text(batching(group))
    async with serving(model_dir=tmp_path, inline_rows=0) as client:
        await flooded(client, name, path)
        started = inference_threads(name)
        config = (await client.get(f"/v2/models/{name}/config")).json()
        policy = served(client, name).policy
    assert started == threads  # with two, the pool started a second thread while the first ran a batch
    assert config["instance_group"][0]["count"] == threads
    assert (policy.inference_threads, policy.max_inflight_batches) == (threads, threads + 1 if group else 2)
    assert "ignored" not in config["parameters"]


async def test_a_config_json_and_a_load_give_a_model_its_instances(tmp_path: Path) -> None:
    name = "recurrent"
    path = save(tmp_path, name, lstm(hidden=8))
    (tmp_path / name / "config.json").write_text(json.dumps({"onnxruntime": {"instances": 3}}))
    load = {"parameters": {"config": json.dumps({"max_batch_size": 4, "dynamic_batching": {},
                                                 "instance_group": [{"count": 2, "kind": "KIND_CPU"}]})}}
    async with serving(model_dir=tmp_path, admin_token=TOKEN, model_control_mode="explicit",
                       load_model=[name]) as client:
        from_json = served(client, name).policy.inference_threads
        loaded = await client.post(f"/v2/repository/models/{name}/load", headers=ADMIN, json=load)
        config = (await client.get(f"/v2/models/{name}/config")).json()
        from_load = served(client, name).policy.inference_threads
        answer = await client.post(f"/v2/models/{name}/infer", json=v2(x := sequences(2, 0)))
    assert from_json == 3
    assert loaded.status_code == 200, loaded.text  # was refused: instance_group "would be ignored"
    assert from_load == 2
    assert config["instance_group"][0]["count"] == 2
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], reference(path, {"steps": x})["last"].ravel(),
                               rtol=1e-5, atol=1e-6)


def test_instances_are_counted_as_triton_counts_them() -> None:
    text = ('instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_GPU gpus: [ 0, 1 ] }, '
            '{ count: 5 passive: true }, { kind: KIND_AUTO host_policy: "numa0" } ]')
    facts = from_triton_text(batching(text), "m", "config.pbtxt")
    assert facts.onnxruntime == ModelRuntimeOptions(instances=2 + 2 + 1)  # passive ones take no requests
    assert facts.ignored == {"instance_group.host_policy": "no host policies"}
    assert from_triton_json('{"instance_group": [{"count": 3}]}', "m", "load").onnxruntime == \
        ModelRuntimeOptions(instances=3)
    with pytest.raises(FactsError, match="not supported in a load's configuration"):  # applied whole or refused
        from_triton_json('{"instance_group": [{"count": 3, "rate_limiter": {"priority": 1}}]}', "m", "load")


@pytest.mark.parametrize(("group", "why"), [
    ("{ count: -1 }", "instance_group 0: count -1: it must be 1 or more"),
    ("{ count: 2 passive: true }", "every group is passive, so no instance would take requests"),
    ("{ count: 200 }, { count: 57 }", "257 instances; at most 256"),
])
def test_instance_groups_that_cannot_be_served_are_refused(group: str, why: str) -> None:
    with pytest.raises(FactsError, match=why):
        from_triton_text(batching(f"instance_group [ {group} ]"), "m", "config.pbtxt")


def test_a_workers_share_of_the_cpus_is_divided_among_its_instances() -> None:
    # 16 CPUs, 2 workers: each has 7 ORT threads (and 8 with the loop's core for the wide session)
    server = OrtOptions([CPU], 7, 8, workers=2, cpu_share=7, wide_share=8)
    four = server.for_model(ModelRuntimeOptions(instances=4))  # 2 in each worker
    assert (four.intra_op_threads, four.wide_threads) == (3, 4)
    many = server.for_model(ModelRuntimeOptions(instances=32))  # 16 in each worker: one thread each
    assert (many.intra_op_threads, many.wide_threads) == (1, 0)
    assert server.for_model(ModelRuntimeOptions(instances=2, intra_op_threads=5)).intra_op_threads == 5  # its own
    given = OrtOptions([CPU], 3, workers=2)  # a server told its threads per batch keeps them
    assert given.for_model(ModelRuntimeOptions(instances=4)).intra_op_threads == 3


def test_each_worker_runs_its_share_of_the_instances() -> None:
    manifest = load_manifest(model_folder("sst2-lstm"))
    manifest = manifest.model_copy(update={"onnxruntime": ModelRuntimeOptions(instances=3)})
    two = batch_policy(Settings(workers=2, max_inflight_batches=2), manifest)
    one = batch_policy(Settings(workers=1, max_inflight_batches=8), manifest)
    assert (two.inference_threads, two.max_inflight_batches) == (2, 3)  # 3 over 2 workers, rounded up
    assert (one.inference_threads, one.max_inflight_batches) == (3, 8)  # more in flight, if the settings say
