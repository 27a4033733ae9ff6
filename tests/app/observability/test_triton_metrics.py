"""Triton's `nv_inference_*` metrics: named as Triton names them, and equal to the statistics
calls' figures (two real workers: tests/app/observability/test_worker_stats.py)."""

from __future__ import annotations

import re

from app.batching import BatchRecord
from app.observability import triton_metrics
from app.observability.stats import ModelStats
from tests.app.conftest import serving

TRITONS_COUNTERS = ["nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                    "nv_inference_compute_output_duration_us", "nv_cache_num_hits_per_model",
                    "nv_cache_num_misses_per_model", "nv_cache_hit_duration_per_model",
                    "nv_cache_miss_duration_per_model"]
_SAMPLE = re.compile(r'^(nv_\w+)\{model="((?:[^"\\]|\\.)*)",version="(\d+)"\} (\d+)$')


def nv_samples(text: str) -> dict[tuple[str, str, str], int]:
    """(family, model, version) -> value, read from the lines exactly as a query names them."""
    found = {}
    for line in text.splitlines():
        if (match := _SAMPLE.match(line)) is not None:
            found[(match[1], match[2], match[3])] = int(match[4])
    return found


def test_the_statistics_are_written_under_tritons_names_as_counters_without_total() -> None:
    stats = ModelStats()
    stats.record_batch(BatchRecord(5, [0.001, 0.002], 0.004, True, input_s=0.0005, output_s=0.0003))
    stats.record_batch(BatchRecord(1, [0.003], 0.002, True, input_s=0.0001, output_s=0.0001))
    for seconds in (0.010, 0.011):
        stats.record_request(seconds, ok=True)
    stats.record_request(0.5, ok=False)
    stats.record_cache_lookup(False, 0.000_002)
    stats.record_cache_insert(0.000_003)
    for _ in range(3):
        stats.record_cache_lookup(True, 0.000_004)

    text = triton_metrics.exposition([stats.as_triton("m", "7"), ModelStats().as_triton("idle", "1")]).decode()

    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    assert types == [(name, "counter") for name in TRITONS_COUNTERS]
    assert "_total" not in text
    found = nv_samples(text)
    assert found == {
        **{(name, "idle", "1"): 0 for name in TRITONS_COUNTERS},
        ("nv_inference_request_success", "m", "7"): 2,
        ("nv_inference_request_failure", "m", "7"): 1,
        ("nv_inference_count", "m", "7"): 6,  # rows, not requests
        ("nv_inference_exec_count", "m", "7"): 2,
        ("nv_inference_request_duration_us", "m", "7"): 21_000,  # answered requests only, as Triton's
        ("nv_inference_queue_duration_us", "m", "7"): 6_000,
        ("nv_inference_compute_input_duration_us", "m", "7"): 2 * 500 + 100,  # each request its batch's time
        ("nv_inference_compute_infer_duration_us", "m", "7"): 2 * 4_000 + 2_000,
        ("nv_inference_compute_output_duration_us", "m", "7"): 2 * 300 + 100,
        ("nv_cache_num_hits_per_model", "m", "7"): 3,
        ("nv_cache_num_misses_per_model", "m", "7"): 1,
        ("nv_cache_hit_duration_per_model", "m", "7"): 12,
        ("nv_cache_miss_duration_per_model", "m", "7"): 5,  # the lookup and the answer kept
    }


def test_label_values_are_escaped_as_the_text_format_wants() -> None:
    text = triton_metrics.exposition([ModelStats().as_triton('a"b\\c\nd', "1")]).decode()
    assert 'nv_inference_count{model="a\\"b\\\\c\\nd",version="1"} 0' in text.splitlines()


async def test_metrics_give_the_statistics_calls_figures_under_tritons_names() -> None:
    async with serving() as client:
        for _ in range(3):
            assert (await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["good"]})).status_code == 200
        two_rows = {"instances": [[[0] * 28] * 28, [[255] * 28] * 28]}
        assert (await client.post("/v1/models/fashion-cnn:predict", json=two_rows)).status_code == 200
        metrics = (await client.get("/metrics")).text
        statistics = (await client.get("/v2/models/stats")).json()["model_stats"]

    found = nv_samples(metrics)
    for entry in statistics:
        key = entry["name"], entry["version"]
        stats = entry["inference_stats"]
        assert found[("nv_inference_request_success", *key)] == stats["success"]["count"]
        assert found[("nv_inference_request_failure", *key)] == stats["fail"]["count"]
        assert found[("nv_inference_count", *key)] == entry["inference_count"]
        assert found[("nv_inference_exec_count", *key)] == entry["execution_count"]
        for family, kind in [("request", "success"), ("queue", "queue"), ("compute_input", "compute_input"),
                             ("compute_infer", "compute_infer"), ("compute_output", "compute_output")]:
            assert found[(f"nv_inference_{family}_duration_us", *key)] == stats[kind]["ns"] // 1000
        assert found[("nv_cache_num_hits_per_model", *key)] == stats["cache_hit"]["count"]
        assert found[("nv_cache_miss_duration_per_model", *key)] == stats["cache_miss"]["ns"] // 1000
    sst2 = next(e["version"] for e in statistics if e["name"] == "sst2-lstm")
    fashion = next(e["version"] for e in statistics if e["name"] == "fashion-cnn")
    assert found[("nv_inference_request_success", "sst2-lstm", sst2)] == 3
    assert found[("nv_inference_request_success", "fashion-cnn", fashion)] == 1
    assert found[("nv_inference_count", "fashion-cnn", fashion)] == 2
    assert found[("nv_inference_compute_infer_duration_us", "fashion-cnn", fashion)] > 0


async def test_the_pending_request_gauge_counts_the_requests_waiting_for_a_batch() -> None:
    """Triton's `nv_inference_pending_request_count`: three requests of two rows queued behind
    a long batching delay are 3 pending (6 queued rows), then 0 once answered."""
    import asyncio

    from tests.app.conftest import serving

    body = {"inputs": [{"name": "token_ids", "shape": [2, 1], "datatype": "INT64", "data": [5, 6]},
                       {"name": "lengths", "shape": [2], "datatype": "INT64", "data": [1, 1]}]}
    async with serving(max_queue_delay_ms=300, max_batch_size=64, idle_dispatch=False) as client:
        version = (await client.get("/v2/models/sst2-lstm")).json()["versions"][-1]
        pending = f'nv_inference_pending_request_count{{model="sst2-lstm",version="{version}"}}'
        queued = [asyncio.ensure_future(client.post("/v2/models/sst2-lstm/infer", json=body)) for _ in range(3)]
        while f"{pending} 3.0" not in (text := (await client.get("/metrics")).text):
            await asyncio.sleep(0.005)
        assert 'ortserve_queue_depth{model="sst2-lstm"} 6.0' in text
        assert "# TYPE nv_inference_pending_request_count gauge" in text
        answered = await asyncio.gather(*queued)
        after = (await client.get("/metrics")).text
    assert [a.status_code for a in answered] == [200] * 3
    assert f"{pending} 0.0" in after
