"""Every Prometheus collector of the service, defined once, in one registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.batching import BatchRecord
from app.observability.log_stream import dropped_lines
from app.observability.loop_histogram import LoopHistogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MODEL_STATES = ("READY", "UNAVAILABLE", "LOADING", "UNLOADING")


class Metrics:
    """Collectors live in their own registry so that several apps (tests) never clash.

    Histograms are LoopHistograms: every one is observed on the event loop, per request or
    per batch, and the event loop is the bottleneck."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("ortserve_requests", "Requests answered: HTTP by status; gRPC calls as endpoint "
                                "grpc.<Method>, by code name",
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
        self.batch_failures = Counter("ortserve_batch_failures", "Batches the model failed on (not those where it "
                                      "refused a request's input: that request's 400)",
                                      ["model"], registry=r)
        self.queue_depth = Gauge("ortserve_queue_depth", "Items waiting to be batched", ["model"],
                                 registry=r)
        self._queue_depths: dict[str, dict[object, Callable[[], float]]] = {}
        self._pending: _Watched | None = None
        self._sequences: _Watched | None = None
        self.inference_items = Counter("ortserve_inference_items", "Items run through a model",
                                       ["model"], registry=r)
        self.metrics_snapshot_failures = Counter(
            "ortserve_metrics_snapshot_failures", "Times this worker could not write its metrics snapshot for "
            "the others (workers above 1; the folder unwritable or gone)", registry=r)
        self.grpc_calls_closed = Counter(
            "ortserve_grpc_calls_closed", "gRPC calls ended or refused for their place (app/grpc/calls.py): "
            "make_room (waited with nothing to do when a new call needed the place), message_late (a unary "
            "call's message not in within body_timeout_s), answer_late (its answer not taken "
            "within send_timeout_s, when a new call needed the place), refused (at max_grpc_calls, every call working)",
            ["reason"], registry=r)
        self.sequence_steps_elsewhere = Counter(
            "ortserve_sequence_steps_elsewhere", "Steps of a stateful model's sequences that reached a worker other "
            "than the one holding the sequence, and were run there (app/sequence_peers.py)", ["model"], registry=r)
        self.access_log_dropped = Counter(
            "ortserve_access_log_dropped_lines", "Access log lines dropped because the log's stream (stderr) took "
            "none of those waiting for it (app/observability/access.py BACKLOG_CHARS)", registry=r)
        self.registry.register(_Counted(
            "ortserve_log_dropped_lines", "The service log's lines (not the access log's) dropped because the log's "
            "stream (stderr) took none of those waiting for it (app/observability/log_stream.py)", dropped_lines))
        self.requests_dropped = Counter("ortserve_requests_dropped",
                                        "Queued requests dropped before they ran, by reason (client_gone: "
                                        "the client hung up)", ["model", "reason"], registry=r)
        # Model lifecycle: off the request path, so plain prometheus-client collectors.
        self.model_state = Gauge("ortserve_model_state", "1 for the state each model version is in",
                                 ["model", "version", "state"], registry=r)
        self.model_loads = Counter("ortserve_model_loads", "Version loads, by result", ["model", "result"],
                                   registry=r)
        self.model_load_failures = Counter("ortserve_model_load_failures", "Failed version loads, by reason",
                                           ["model", "reason"], registry=r)
        self.model_unloads = Counter("ortserve_model_unloads", "Versions unloaded", ["model"], registry=r)
        self.model_load_seconds = Histogram("ortserve_model_load_seconds",
                                            "Reading, verifying, loading and warming up one version",
                                            ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.batcher_restarts = Counter("ortserve_batcher_restarts",
                                        "Times a model's batch-forming task died and was restarted",
                                        ["model"], registry=r)
        self.model_stalled = Gauge("ortserve_model_stalled",
                                   "1 while a batch of this version runs past inference_timeout_s",
                                   ["model", "version"], registry=r)
        self.model_breaker_open = Gauge("ortserve_model_breaker_open",
                                        "1 while this version answers 503 after failed batches in a row",
                                        ["model", "version"], registry=r)

    def batch_observer(self, model: str) -> Callable[[BatchRecord], None]:
        queue_time, compute = self.queue_time.labels(model), self.compute_time.labels(model)
        size, failures = self.batch_size.labels(model), self.batch_failures.labels(model)
        items = self.inference_items.labels(model)

        def observe(record: BatchRecord) -> None:
            for wait in record.queue_waits_s:
                queue_time.observe(wait)
            compute.observe(record.compute_s)
            size.observe(record.rows)
            items.inc(record.answered_rows)
            if not record.ok and not record.refused:  # a refused input is the client's 400, no fault
                failures.inc()

        return observe

    def watch_queue(self, model: str, key: object, depth: Callable[[], float]) -> None:
        """Queue depth read when scraped: nothing to update on the request path. The
        versions of one model share its label, so their depths add up."""
        depths = self._queue_depths.setdefault(model, {})
        depths[key] = depth
        self.queue_depth.labels(model).set_function(lambda: sum(d() for d in list(depths.values())))

    def unwatch_queue(self, model: str, key: object) -> None:
        self._queue_depths.get(model, {}).pop(key, None)

    def watch_pending(self, pending: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """Triton's pending-request gauge, `nv_inference_pending_request_count` (its name, for
        dashboards and autoscaling rules written for Triton): (model, version, requests waiting
        for a batch) of every served version, read when scraped. A collector that asks the
        repository, not a gauge per version, so that nothing here holds a retired version.
        The one a lifespan that started before left is replaced."""
        self.unwatch_pending()
        self._pending = _Watched("nv_inference_pending_request_count", "Requests waiting for a batch (queued, not yet "
                                 "taken into one)", pending)
        self.registry.register(self._pending)

    def watch_sequences(self, active: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """`ortserve_sequences_active`: (model, version, sequences active) of every served stateful
        model (app/sequences.py), read when scraped, as the pending requests are."""
        self.unwatch_sequences()
        self._sequences = _Watched("ortserve_sequences_active", "Sequences of a stateful model started and not yet "
                                   "ended (sequence_end, or idle past max_sequence_idle_microseconds)", active)
        self.registry.register(self._sequences)

    def unwatch_pending(self) -> None:
        if self._pending is not None:
            self.registry.unregister(self._pending)
            self._pending = None

    def unwatch_sequences(self) -> None:
        if self._sequences is not None:
            self.registry.unregister(self._sequences)
            self._sequences = None

    def set_state(self, model: str, version: str, state: str) -> None:
        for each in MODEL_STATES:
            self.model_state.labels(model, version, each).set(1 if each == state else 0)


class RequestSeries:
    """Requests answered and their latency, by model, endpoint and status, for every transport
    (app/http/middleware.py per HTTP request, app/grpc/service.py per gRPC call).

    Only a model that exists is a label value: a client's string (an unknown model, any name
    on a wrong method) would grow the series without bound. The labelled children are
    cached: `labels()` takes a lock and builds a key on every call."""

    def __init__(self, metrics: Metrics, model_exists: Callable[[str], bool]) -> None:
        self.metrics = metrics
        self.model_exists = model_exists
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._models_seen: set[str] = set()

    def record(self, model: str, endpoint: str, status: str, seconds: float) -> None:
        if model and model not in self._models_seen:
            if self.model_exists(model):
                self._models_seen.add(model)  # a model once served stays a valid label
            else:
                model = ""
        key = (model, endpoint, status)
        found = self._children.get(key)
        if found is None:
            found = (self.metrics.requests.labels(model, endpoint, status),
                     self.metrics.request_latency.labels(model, endpoint))
            self._children[key] = found
        found[0].inc()
        found[1].observe(seconds)


class _Watched(Collector):
    """A gauge by model and version, read from the repository when scraped."""

    def __init__(self, name: str, documentation: str, read: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["model", "version"])
        for model, version, value in self.read():
            family.add_metric([model, version], value)
        yield family


class _Counted(Collector):
    """A counter kept elsewhere (by the logging handler, in every thread that logs), read when scraped."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())
