"""Triton's response cache: the cache itself (keys, bounds, parts), and a served model whose
configuration enables it answering repeated inputs without running the model."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from app.model_facts import from_triton_text
from app.response_cache import ARRAY_OVERHEAD_BYTES, ENTRY_OVERHEAD_BYTES, CachePart, Key, ResponseCache
from tests.app.conftest import serving, serving_grpc
from tests.app.onnx_models import mlp, reference, save

CACHED = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 0 }
response_cache { enable: true }
"""


def features(seed: int, rows: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def keep(part: CachePart, key: Key | None, outputs: dict[str, np.ndarray]) -> None:
    """Answered twice: an answer is kept the second time its inputs come."""
    assert key is not None
    for _ in range(2):
        part.put(key, outputs)


def test_an_answer_is_kept_the_second_time_its_inputs_come() -> None:
    """Inputs that never come again (most traffic) cost a remembered hash, not a copy, an
    insertion and an eviction each."""
    cache = ResponseCache(1 << 20)
    part = cache.part()
    first, second = part.key({"x": features(0)}), part.key({"x": features(1)})
    assert first is not None
    assert second is not None
    part.put(first, {"y": np.ones(3, np.float32)})
    assert part.get(first) is None
    assert len(cache) == 0
    part.put(second, {"y": np.ones(3, np.float32)})  # other inputs between: both still remembered
    part.put(first, {"y": np.ones(3, np.float32)})
    assert part.get(first) is not None
    assert part.get(second) is None


def test_inputs_are_known_by_their_names_types_shapes_and_bytes() -> None:
    cache = ResponseCache(1 << 20)
    part = cache.part()
    x = features(0)
    key = part.key({"x": x})
    assert part.key({"x": x.copy()}) == key
    assert part.key({"x": np.asfortranarray(x)}) == key  # the same values, laid out otherwise
    assert part.key({"y": x}) != key
    assert part.key({"x": x.astype(np.float64)}) != key
    assert part.key({"x": x.reshape(1, 2, 4)}) != key
    changed = x.copy()
    changed[1, 3] += 1e-6
    assert part.key({"x": changed}) != key
    assert part.key({"x": x, "t": np.array(["a"], dtype=object)}) is None  # BYTES: not cached
    assert cache.part().key({"x": x}) != key  # another loaded version's part


def test_answers_are_kept_read_only_and_apart_from_the_batch_they_came_from() -> None:
    cache = ResponseCache(1 << 20)
    part = cache.part()
    key = part.key({"x": features(0)})
    assert key is not None
    batch = np.arange(40, dtype=np.float32).reshape(10, 4)
    keep(part, key, {"scores": batch[2:4]})  # a view of two rows of a batch
    kept = part.get(key)
    assert kept is not None
    np.testing.assert_array_equal(kept["scores"], batch[2:4])
    assert not np.shares_memory(kept["scores"], batch)
    assert not kept["scores"].flags.writeable
    size = ENTRY_OVERHEAD_BYTES + features(0).nbytes + ARRAY_OVERHEAD_BYTES + 2 * 4 * 4  # the inputs held too
    assert cache.used_bytes == size
    part.put(key, {"scores": batch[2:4]})  # kept again: counted once
    assert len(cache) == 1
    assert cache.used_bytes == size


def test_the_least_recently_used_go_first_within_the_bytes_given() -> None:
    entry = ENTRY_OVERHEAD_BYTES + features(0).nbytes + ARRAY_OVERHEAD_BYTES + 400
    cache = ResponseCache(3 * entry)
    part = cache.part()
    keys = [part.key({"x": features(seed)}) for seed in range(4)]
    for key in keys[:3]:
        keep(part, key, {"y": np.zeros(100, np.float32)})
    assert part.get(keys[0] or (0,)) is not None  # used: now the most recent
    keep(part, keys[3], {"y": np.zeros(100, np.float32)})
    assert [part.get(k) is not None for k in keys] == [True, False, True, True]
    assert cache.used_bytes == 3 * entry
    keep(part, keys[1], {"y": np.zeros(10_000, np.float32)})  # larger than the whole cache
    assert part.get(keys[1] or (0,)) is None
    assert cache.used_bytes == 3 * entry
    keep(part, keys[1], {"s": np.array(["text"], dtype=object)})  # its bytes cannot be counted
    assert len(cache) == 3


def test_a_part_cleared_leaves_the_others() -> None:
    cache = ResponseCache(1 << 20)
    old, new = cache.part(), cache.part()
    x = {"x": features(0)}
    old_key, new_key = old.key(x), new.key(x)
    assert old_key is not None
    assert new_key is not None
    keep(old, old_key, {"y": np.zeros(3, np.float32)})
    keep(new, new_key, {"y": np.ones(3, np.float32)})
    old.clear()
    assert old.get(old_key) is None
    kept = new.get(new_key)
    assert kept is not None
    np.testing.assert_array_equal(kept["y"], np.ones(3, np.float32))
    assert cache.used_bytes == ENTRY_OVERHEAD_BYTES + features(0).nbytes + ARRAY_OVERHEAD_BYTES + 12


def test_a_triton_configuration_enables_it() -> None:
    assert from_triton_text(CACHED, "m", "m/config.pbtxt").response_cache is True
    off = from_triton_text("response_cache { enable: false }", "m", "m/config.pbtxt")
    assert off.response_cache is False
    assert "response_cache" not in off.ignored
    assert from_triton_text("max_batch_size: 4", "m", "m/config.pbtxt").response_cache is None


@pytest.fixture
def cached_mlp(model_root: Path) -> Path:
    """The shipped models beside a drop-in whose config.pbtxt enables the response cache."""
    save(model_root, "mlp", mlp())
    (model_root / "mlp" / "config.pbtxt").write_text(CACHED)
    return model_root


def v2_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


async def test_a_repeated_input_is_answered_from_the_cache_without_running_the_model(cached_mlp: Path) -> None:
    x, y = features(1), features(2)
    want = reference(cached_mlp / "mlp" / "1" / "model.onnx", {"features": x})["scores"]
    async with serving(model_dir=cached_mlp, response_cache_bytes=1 << 20, warmup=False) as client:
        answers = [await client.post("/v2/models/mlp/infer", json=v2_body(x)) for _ in range(4)]
        after_repeats = (await client.get("/v2/models/mlp/stats")).json()["model_stats"][0]
        other = await client.post("/v2/models/mlp/infer", json=v2_body(y))
        after_other = (await client.get("/v2/models/mlp/stats")).json()["model_stats"][0]
        config = (await client.get("/v2/models/mlp/config")).json()
        for _ in range(2):  # the shipped model does not enable it
            assert (await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["good"]})).status_code == 200
        shipped = (await client.get("/v2/models/sst2-lstm/stats")).json()["model_stats"][0]
        metrics = (await client.get("/metrics")).text
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert answers[1].json() == answers[2].json() == answers[3].json() == answers[0].json()
    np.testing.assert_allclose(np.array(answers[1].json()["outputs"][0]["data"]).reshape(2, 3), want,
                               rtol=1e-6, atol=1e-6)
    stats = after_repeats["inference_stats"]
    # kept the second time the inputs came: two misses, then hits
    assert (stats["cache_miss"]["count"], stats["cache_hit"]["count"]) == (2, 2)
    assert stats["success"]["count"] == 4
    assert (after_repeats["inference_count"], after_repeats["execution_count"]) == (4, 2)  # the model ran twice
    assert stats["cache_hit"]["ns"] > 0
    assert stats["cache_miss"]["ns"] > 0
    assert other.status_code == 200
    assert other.json() != answers[0].json()
    assert after_other["inference_stats"]["cache_miss"]["count"] == 3
    assert after_other["inference_count"] == 6
    assert config["response_cache"] == {"enable": True}
    assert shipped["inference_stats"]["cache_hit"] == shipped["inference_stats"]["cache_miss"] == {"count": 0, "ns": 0}
    assert shipped["execution_count"] == 2
    assert 'nv_cache_num_hits_per_model{model="mlp",version="1"} 2' in metrics.splitlines()


async def test_binary_tensors_of_the_same_values_hit_what_json_kept(cached_mlp: Path) -> None:
    """The key is the tensor, not the body: the same floats sent either way are one input."""
    x = features(3, rows=1)
    async with serving(model_dir=cached_mlp, response_cache_bytes=1 << 20, warmup=False) as client:
        as_json = [await client.post("/v2/models/mlp/infer", json=v2_body(x)) for _ in range(2)][-1]  # kept
        given = triton.InferInput("features", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=True)
        body, header_length = triton.InferenceServerClient.generate_request_body(
            [given], outputs=[triton.InferRequestedOutput("scores", binary_data=True)])
        as_binary = await client.post("/v2/models/mlp/infer", content=body,
                                      headers={"Inference-Header-Content-Length": str(header_length)})
        stats = (await client.get("/v2/models/mlp/stats")).json()["model_stats"][0]["inference_stats"]
    assert as_json.status_code == 200
    assert as_binary.status_code == 200
    answer = triton.InferenceServerClient.parse_response_body(
        as_binary.content, header_length=int(as_binary.headers["inference-header-content-length"]))
    np.testing.assert_array_equal(answer.as_numpy("scores").ravel(),
                                  np.array(as_json.json()["outputs"][0]["data"], np.float32))
    assert (stats["cache_miss"]["count"], stats["cache_hit"]["count"]) == (2, 1)


async def test_a_model_that_enables_it_on_a_server_without_a_cache_says_so_and_runs_every_request(
        cached_mlp: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "app.repository.loader")
    x = features(4)
    async with serving(model_dir=cached_mlp, warmup=False) as client:
        for _ in range(2):
            assert (await client.post("/v2/models/mlp/infer", json=v2_body(x))).status_code == 200
        found = (await client.get("/v2/models/mlp/stats")).json()["model_stats"][0]
        config = (await client.get("/v2/models/mlp/config")).json()
    assert "mlp v1 asks for the response cache, but response_cache_bytes is 0" in caplog.text
    assert found["execution_count"] == 2
    assert found["inference_stats"]["cache_hit"]["count"] == 0
    assert "response_cache" not in config
    assert "response_cache_bytes 0" in config["parameters"]["response_cache"]["string_value"]


async def test_grpc_calls_hit_what_http_kept(cached_mlp: Path) -> None:
    from tritonclient.grpc import service_pb2 as pb

    x = features(5, rows=1)
    async with serving_grpc(model_dir=cached_mlp, response_cache_bytes=1 << 20, warmup=False) as (http, stub, _):
        over_http = [await http.post("/v2/models/mlp/infer", json=v2_body(x)) for _ in range(2)][-1]  # kept
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        answered = await stub.ModelInfer(request)
        stats = (await http.get("/v2/models/mlp/stats")).json()["model_stats"][0]["inference_stats"]
    assert over_http.status_code == 200
    np.testing.assert_array_equal(np.frombuffer(answered.raw_output_contents[0], np.float32),
                                  np.array(over_http.json()["outputs"][0]["data"], np.float32))
    assert (stats["cache_miss"]["count"], stats["cache_hit"]["count"]) == (2, 1)


async def test_a_load_of_a_shipped_model_can_enable_it_and_its_v1_answers_come_from_it() -> None:
    """The manifest's model with a load's configuration; V1's classified answers kept too.
    A load again without it starts from nothing (a new part of the cache)."""
    token = {"Authorization": "Bearer cache-token"}
    sentences = {"instances": ["a gripping, beautifully acted film", "a dull mess"]}
    async with serving(admin_token="cache-token", model_control_mode="explicit", load_model=["sst2-lstm"],
                       response_cache_bytes=1 << 20, warmup=False) as client:
        loaded = await client.post("/v2/repository/models/sst2-lstm/load", headers=token,
                                   json={"parameters": {"config": json.dumps({"response_cache": {"enable": True}})}})
        answers = [await client.post("/v1/models/sst2-lstm:predict", json=sentences) for _ in range(3)]
        cached = (await client.get("/v2/models/sst2-lstm/stats")).json()["model_stats"][0]
        again = await client.post("/v2/repository/models/sst2-lstm/load", headers=token)
        after = await client.post("/v1/models/sst2-lstm:predict", json=sentences)
        plain = (await client.get("/v2/models/sst2-lstm/stats")).json()["model_stats"][0]
    assert loaded.status_code == 200, loaded.text
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    assert [p["label"] for p in answers[0].json()["predictions"]] == ["positive", "negative"]
    assert (cached["inference_stats"]["cache_hit"]["count"], cached["execution_count"]) == (1, 2)
    assert again.status_code == 200
    assert after.json() == answers[0].json()
    assert plain["inference_stats"]["cache_hit"]["count"] == 0  # loaded without it: the model answered
    assert plain["execution_count"] == 1


def test_what_python_holds_for_the_cache_stays_within_its_bytes() -> None:
    """The allowance per entry and per array covers what the entries really take, so the
    setting bounds the memory, not only the outputs' bytes."""
    capacity = 1 << 20
    x = np.zeros((1, 1, 28, 28), np.float32)
    outputs = {"logits": np.zeros((1, 10), np.float32), "probabilities": np.ones((1, 10), np.float32)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ResponseCache(capacity)
        part = cache.part()
        for i in range(20_000):  # many times what fits
            x[0, 0, 0, 0] = i
            keep(part, part.key({"pixels": x}), outputs)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert capacity * 0.9 <= cache.used_bytes <= capacity
    assert cache.seen_slots == capacity // 64  # a slot per 64 bytes: 128 KB here, 512 KB at most
    assert held <= capacity * 1.05 + 8 * cache.seen_slots, f"{held:,} bytes held for a cache of {capacity:,}"
