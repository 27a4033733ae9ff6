"""Metrics read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from app.observability.loop_histogram import LoopHistogram
from app.observability.metrics import Metrics


def test_queue_depth_is_read_when_scraped_and_adds_up_across_versions() -> None:
    metrics = Metrics()
    queued = {"v1": 3, "v2": 0}
    metrics.watch_queue("m", "v1", lambda: queued["v1"])
    metrics.watch_queue("m", "v2", lambda: queued["v2"])
    assert 'ortserve_queue_depth{model="m"} 3.0' in generate_latest(metrics.registry).decode()
    queued["v2"] = 4
    assert 'ortserve_queue_depth{model="m"} 7.0' in generate_latest(metrics.registry).decode()
    metrics.unwatch_queue("m", "v1")  # an unloaded version stops counting (and is not kept alive)
    assert 'ortserve_queue_depth{model="m"} 4.0' in generate_latest(metrics.registry).decode()


def test_loop_histogram_exposes_what_a_prometheus_histogram_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("t_seconds", "doc", ["model"], buckets=(0.001, 0.01, 1.0), registry=ours).labels("m")
    reference = Histogram("t_seconds", "doc", ["model"], buckets=(0.001, 0.01, 1.0), registry=theirs).labels("m")
    for value in (0.0005, 0.001, 0.005, 0.5, 3.0, 0.01):  # both sides of each bound, and on it
        fast.observe(value)
        reference.observe(value)
    expected = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected
    assert 't_seconds_bucket{le="0.01",model="m"} 4.0' in expected
