"""The console's live figures: per model, what /metrics says, as one small JSON object.

Read from the very collectors /metrics exposes (with several workers, their merge:
app/observability/workers.py), not from counters of its own, so the console and a
Prometheus scrape never disagree. Everything is cumulative, as Prometheus' counters are:
the page takes the difference of two summaries for a rate, and of two histograms'
buckets for the latency quantiles of the seconds between them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import Metric

_OK = ("2", "3", "OK")  # HTTP statuses below 400; gRPC's OK
_ADDED = {"ortserve_request_latency_seconds_count": "latency_count", "ortserve_request_latency_seconds_sum": "latency_sum",
          "ortserve_batch_size_count": "batches", "ortserve_batch_size_sum": "batch_rows",
          "ortserve_queue_depth": "queue_depth"}
"""Samples added up as they are, each under its figure's name."""


def summarize(families: Iterable[Metric], workers: int = 1) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}

    def model(name: str) -> dict[str, Any]:
        return models.setdefault(name, {"requests": 0.0, "errors": 0.0, "latency": {}, "latency_count": 0.0,
                                        "latency_sum": 0.0, "batches": 0.0, "batch_rows": 0.0, "queue_depth": 0.0})

    for family in families:
        for sample in family.samples:
            name = sample.labels.get("model", "")
            if not name:  # a request for no model, or for one never served
                continue
            if sample.name == "ortserve_requests_total":
                figures = model(name)
                figures["requests"] += sample.value
                if not sample.labels.get("status", "").startswith(_OK):
                    figures["errors"] += sample.value
            elif sample.name == "ortserve_request_latency_seconds_bucket":
                buckets = model(name)["latency"]
                bound = sample.labels["le"]
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif (key := _ADDED.get(sample.name)) is not None:
                model(name)[key] += sample.value
    for figures in models.values():
        # [upper bound in seconds (null: +Inf), requests at or below it], in order
        figures["latency"] = sorted(([None if float(le) == math.inf else float(le), count]
                                     for le, count in figures["latency"].items()),
                                    key=lambda b: math.inf if b[0] is None else b[0])
    return {"time": time.time(), "workers": workers, "models": models}

