"""Every Prometheus collector of the service, defined once, in one registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)

from app.batching import BatchRecord
from app.observability.loop_histogram import LoopHistogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


class Metrics:
    """Collectors live in their own registry so that several apps (tests) never clash.

    Histograms are LoopHistograms: every one is observed on the event loop, per request or
    per batch, and the event loop is the bottleneck."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("ortserve_requests", "HTTP requests answered",
                                ["model", "endpoint", "status"], registry=r)
        self.request_latency = LoopHistogram("ortserve_request_latency_seconds",
                                             "Arrival to response, per request", ["model", "endpoint"],
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = LoopHistogram("ortserve_queue_time_seconds", "Time a request waited for its batch",
                                        ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_time = LoopHistogram("ortserve_compute_time_seconds", "Time one batch ran in the model",
                                          ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = LoopHistogram("ortserve_batch_size", "Items per executed batch", ["model"],
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_failures = Counter("ortserve_batch_failures", "Batches the model failed on",
                                      ["model"], registry=r)
        self.queue_depth = Gauge("ortserve_queue_depth", "Items waiting to be batched", ["model"],
                                 registry=r)
        self._queue_depths: dict[str, list[Callable[[], float]]] = {}
        self.inference_items = Counter("ortserve_inference_items", "Items run through a model",
                                       ["model"], registry=r)

    def batch_observer(self, model: str) -> Callable[[BatchRecord], None]:
        queue_time, compute = self.queue_time.labels(model), self.compute_time.labels(model)
        size, failures = self.batch_size.labels(model), self.batch_failures.labels(model)
        items = self.inference_items.labels(model)

        def observe(record: BatchRecord) -> None:
            for wait in record.queue_waits_s:
                queue_time.observe(wait)
            compute.observe(record.compute_s)
            size.observe(record.rows)
            if record.ok:
                items.inc(record.rows)
            else:
                failures.inc()

        return observe

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        """Queue depth read when scraped: nothing to update on the request path. The
        versions of one model share its label, so their depths add up."""
        depths = self._queue_depths.setdefault(model, [])
        depths.append(depth)
        self.queue_depth.labels(model).set_function(lambda: sum(d() for d in depths))
