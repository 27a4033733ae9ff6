"""Metrics read at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from app.metrics import Metrics


def test_queue_depth_is_read_when_scraped_and_adds_up_across_versions() -> None:
    metrics = Metrics()
    queued = {"v1": 3, "v2": 0}
    metrics.watch_queue("m", lambda: queued["v1"])
    metrics.watch_queue("m", lambda: queued["v2"])
    assert 'ortserve_queue_depth{model="m"} 3.0' in generate_latest(metrics.registry).decode()
    queued["v2"] = 4
    assert 'ortserve_queue_depth{model="m"} 7.0' in generate_latest(metrics.registry).decode()
