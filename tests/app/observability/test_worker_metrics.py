"""One /metrics for every worker process: the merge rules, and two real workers."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.loop_histogram import LoopHistogram
from app.observability.metrics import Metrics
from app.observability.workers import WorkerMetrics
from load_tests.server import ServerProcess
from tests.app.conftest import sample_images, wait_for
from tests.conftest import MODELS


def worker_registry(requests: int, depth: float, state: float, latencies: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("ortserve_requests", "answered", ["model"], registry=registry).labels("m").inc(requests)
    Gauge("ortserve_queue_depth", "waiting", ["model"], registry=registry).labels("m").set(depth)
    Gauge("ortserve_model_state", "state", ["model"], registry=registry).labels("m").set(state)
    Gauge("process_resident_memory_bytes", "rss", registry=registry).set(requests * 1000)
    histogram = LoopHistogram("ortserve_request_latency_seconds", "latency", ["model"], buckets=[0.01, 0.1],
                              registry=registry)
    for value in latencies:
        histogram.labels("m").observe(value)
    return registry


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_counters_histograms_and_queue_depths_add_up_and_process_metrics_stay_per_worker(tmp_path: Path) -> None:
    first = WorkerMetrics(worker_registry(3, 2.0, 1.0, [0.005, 0.05]), tmp_path, pid=os.getpid())
    second = WorkerMetrics(worker_registry(5, 4.0, 0.0, [0.5]), tmp_path, pid=os.getppid())
    second.write_snapshot()
    merged = samples(first.exposition())
    assert merged[("ortserve_requests_total", (("model", "m"),))] == 8
    assert merged[("ortserve_queue_depth", (("model", "m"),))] == 6  # items waiting in either
    assert merged[("ortserve_model_state", (("model", "m"),))] == 1  # any worker's, not a sum
    assert merged[("ortserve_request_latency_seconds_count", (("model", "m"),))] == 3
    assert merged[("ortserve_request_latency_seconds_bucket", (("le", "0.01"), ("model", "m")))] == 1
    assert merged[("ortserve_request_latency_seconds_bucket", (("le", "+Inf"), ("model", "m")))] == 3
    assert merged[("process_resident_memory_bytes", (("worker", str(os.getpid())),))] == 3000
    assert merged[("process_resident_memory_bytes", (("worker", str(os.getppid())),))] == 5000


def test_a_dead_workers_counters_stay_in_the_merge_and_its_gauges_leave(tmp_path: Path) -> None:
    live = WorkerMetrics(worker_registry(1, 0, 1, []), tmp_path)
    dead = WorkerMetrics(worker_registry(7, 3.0, 2.0, [0.05, 0.5]), tmp_path, pid=999_999_999)
    dead.write_snapshot()
    assert samples(live.exposition())[("ortserve_requests_total", (("model", "m"),))] == 8
    assert not (tmp_path / "999999999.prom").exists()
    retired = list(tmp_path.glob("retired-999999999-*.prom"))
    assert len(retired) == 1
    for _ in range(2):  # and on every scrape after
        merged = samples(live.exposition())
        assert merged[("ortserve_requests_total", (("model", "m"),))] == 8
        assert merged[("ortserve_request_latency_seconds_count", (("model", "m"),))] == 2
        assert merged[("ortserve_queue_depth", (("model", "m"),))] == 0  # its gauges are gone with it
        assert merged[("ortserve_model_state", (("model", "m"),))] == 1
        assert ("process_resident_memory_bytes", (("worker", "999999999"),)) not in merged


def test_a_worker_that_exits_leaves_its_counts_behind(tmp_path: Path) -> None:
    first = WorkerMetrics(worker_registry(3, 0, 1, []), tmp_path, pid=os.getpid())
    leaving = WorkerMetrics(worker_registry(5, 0, 1, []), tmp_path, pid=os.getppid())
    leaving.retire_snapshot()
    assert samples(first.exposition())[("ortserve_requests_total", (("model", "m"),))] == 8


def test_an_unwritable_or_removed_folder_is_reported_once_and_metrics_keep_answering(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import shutil

    caplog.set_level(logging.INFO, "app.observability.workers")
    metrics = Metrics()
    metrics.requests.labels("m", "v1_predict", "200").inc(4)
    folder = tmp_path / "metrics"
    worker = WorkerMetrics(metrics.registry, folder, failures=metrics.metrics_snapshot_failures)
    shutil.rmtree(folder)  # removed: made again
    assert samples(worker.exposition())[("ortserve_requests_total", (("endpoint", "v1_predict"), ("model", "m"),
                                                                     ("status", "200")))] == 4
    assert worker.files.path.exists()
    shutil.rmtree(folder)
    folder.write_text("not a folder")  # cannot be made again: reported, once
    for _ in range(5):
        merged = samples(worker.exposition())
        assert merged[("ortserve_requests_total", (("endpoint", "v1_predict"), ("model", "m"), ("status", "200")))] == 4
    assert merged[("ortserve_metrics_snapshot_failures_total", ())] >= 4  # counted as of each scrape's start
    assert caplog.text.count("cannot write this worker's metrics snapshot") == 1
    folder.unlink()
    worker.write_snapshot()
    assert "written to" in caplog.text
    assert worker.files.path.exists()


def test_one_workers_metrics_come_through_the_merge_unchanged(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.request_latency.labels("fashion-cnn", "v1_predict").observe(0.003)
    metrics.requests.labels("fashion-cnn", "v1_predict", "200").inc()
    original = samples(generate_latest(metrics.registry))
    merged = samples(WorkerMetrics(metrics.registry, tmp_path, pid=4321).exposition())
    service = {k: v for k, v in original.items() if not k[0].startswith(("process_", "python_"))}
    assert {k: v for k, v in merged.items() if k in service} == service
    assert ("ortserve_request_latency_seconds_count", (("endpoint", "v1_predict"), ("model", "fashion-cnn"))) in merged
    per_worker = {k for k in merged if k[0].startswith("process_")}
    assert per_worker
    assert all(("worker", "4321") in labels for _, labels in per_worker)


def test_two_workers_answer_one_exposition_counting_every_request() -> None:
    body = {"instances": sample_images(1).tolist()}
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--no-warmup"]) as server:
        # A worker's first metrics snapshot comes after it is ready, and on a busy machine
        # after the requests below: wait until the merge names both.
        wait_for(lambda: len(set(re.findall(r'process_resident_memory_bytes\{worker="(\d+)"\}',
                                            httpx.get(server.url + "/metrics", timeout=30).text))) == 2)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answered = [client.post("/v1/models/fashion-cnn:predict", json=body).status_code for _ in range(40)]
            assert answered == [200] * 40
            time.sleep(1.5)  # every worker has written a snapshot since (each second)
            # New connections land on either worker; every scrape counts both workers' requests.
            texts = [httpx.get(server.url + "/metrics", timeout=30).text for _ in range(6)]
    workers = set()
    for text in texts:
        counted = sum(float(v) for v in re.findall(
            r'ortserve_requests_total\{endpoint="v1_predict",model="fashion-cnn",status="200"\} (\S+)', text))
        assert counted == 40
        workers |= set(re.findall(r'process_resident_memory_bytes\{worker="(\d+)"\}', text))
    assert len(workers) == 2


def test_killing_a_worker_under_load_never_makes_a_counter_go_backwards() -> None:
    import signal
    import threading

    body = {"instances": sample_images(1).tolist()}
    totals: list[tuple[str, float]] = []  # ("before" or "after" the kill, every request counted)
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(20_000):  # bounded; stopped long before
                if stop.is_set():
                    return
                try:
                    client.post("/v1/models/fashion-cnn:predict", json=body)
                except httpx.HTTPError:  # the killed worker's connections
                    pass

    def scrape(url: str) -> tuple[float, set[str]]:
        text = httpx.get(url + "/metrics", timeout=30).text
        counted = sum(float(v) for v in re.findall(r"^ortserve_requests_total\{[^}]*\} (\S+)$", text, re.M))
        return counted, set(re.findall(r'process_resident_memory_bytes\{worker="(\d+)"\}', text))

    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--no-warmup"]) as server:
        loaders = [threading.Thread(target=load, args=(server.url,)) for _ in range(3)]
        for thread in loaders:
            thread.start()
        try:
            workers: set[str] = set()
            for _ in range(40):  # until both workers have shown up in a scrape
                counted, seen = scrape(server.url)
                totals.append(("before", counted))
                workers |= seen
                if len(workers) == 2 and counted > 50:
                    break
                time.sleep(0.2)
            assert len(workers) == 2
            victim = int(sorted(workers)[0])
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    counted, seen = scrape(server.url)
                except httpx.HTTPError:
                    continue
                totals.append(("after", counted))
                if str(victim) not in seen and len(seen) == 2 and len([t for t in totals if t[0] == "after"]) > 10:
                    break  # a new worker took its place, and the merge has been read many times since
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in loaders:
                thread.join(30)
    values = [value for _, value in totals]
    assert any(kind == "after" for kind, _ in totals)
    assert values == sorted(values), f"a counter went backwards: {values}"
    assert values[-1] > max(value for kind, value in totals if kind == "before")
