"""Triton's inference metrics (`nv_inference_*`) in /metrics, so that the dashboards, alerts
and autoscaling rules people already run against Triton read this server unchanged.

They are Triton's statistics extension (stats.py) under Triton's metric names, from the very
figures the statistics calls answer: every worker's summed (worker_stats.py), a worker that
is gone included, so they never go backwards while a version is served, and perf_analyzer's
statistics and a Prometheus query cannot disagree. As in Triton, a version's series go when
it is unloaded, and a reloaded version counts from zero in the workers that serve it.

Written as text rather than through prometheus-client: Triton's counters are named without
`_total` (`nv_inference_request_success`), which the client library appends to every counter
it writes, and a query or dashboard names the series exactly. The Prometheus text format
allows a counter so named.

Given: Triton's nine per-model inference counters (counts, and durations in microseconds)
and its four per-model response cache counters (zero for a model without the cache); its
pending-request gauge, `nv_inference_pending_request_count`, is the metrics' own
(metrics.py: the batchers' queued requests, summed over workers). Not given: the failure
counter's `reason` label (the statistics count failures, not why), the
summaries (`ortserve_*_seconds` are histograms), and the GPU and CPU families (DCGM's and the
host's, which node exporters give).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Statistics = dict[str, Any]
"""One model version's, as Triton's statistics extension writes them (stats.py `as_triton`)."""


def _count(kind: str) -> Callable[[Statistics], int]:
    return lambda s: int(s["inference_stats"][kind]["count"])


def _microseconds(kind: str) -> Callable[[Statistics], int]:
    return lambda s: int(s["inference_stats"][kind]["ns"]) // 1000


# Triton's names, in the order Triton writes them, each with what it counts here.
FAMILIES: tuple[tuple[str, str, Callable[[Statistics], int]], ...] = (
    ("nv_inference_request_success", "Inference requests answered, each counted once whatever its rows",
     _count("success")),
    ("nv_inference_request_failure", "Inference requests queued for the model that got no answer (its error, "
     "the deadline, the client gone), each counted once", _count("fail")),
    ("nv_inference_count", "Rows inferred (a request of n rows counts n)", lambda s: int(s["inference_count"])),
    ("nv_inference_exec_count", "Batches the model ran", lambda s: int(s["execution_count"])),
    ("nv_inference_request_duration_us", "Total time of the answered requests, from queueing to the answer, "
     "in microseconds", _microseconds("success")),
    ("nv_inference_queue_duration_us", "Total time requests waited for their batch, in microseconds",
     _microseconds("queue")),
    ("nv_inference_compute_input_duration_us", "Total time requests' batches spent gathering their inputs, "
     "each request counted with its batch's time, in microseconds", _microseconds("compute_input")),
    ("nv_inference_compute_infer_duration_us", "Total time requests' batches ran in the model, each request "
     "counted with its batch's time, in microseconds", _microseconds("compute_infer")),
    ("nv_inference_compute_output_duration_us", "Total time requests' batches spent handing their outputs "
     "back, each request counted with its batch's time, in microseconds", _microseconds("compute_output")),
    ("nv_cache_num_hits_per_model", "Requests answered from the response cache", _count("cache_hit")),
    ("nv_cache_num_misses_per_model", "Requests the response cache did not hold (then answered by the model)",
     _count("cache_miss")),
    ("nv_cache_hit_duration_per_model", "Total time of the response cache's hits, in microseconds",
     _microseconds("cache_hit")),
    ("nv_cache_miss_duration_per_model", "Total time of the response cache's misses (the lookup, and keeping "
     "the answer), in microseconds", _microseconds("cache_miss")),
)


def exposition(statistics: Iterable[Statistics]) -> bytes:
    """The `nv_inference_*` families of these model versions, in Prometheus' text format."""
    versions = list(statistics)
    lines = []
    for name, help_text, value in FAMILIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f'{name}{{model="{_label(s["name"])}",version="{_label(s["version"])}"}} {value(s)}'
                  for s in versions]
    return ("\n".join(lines) + "\n").encode()


def _label(value: object) -> str:
    """A label value as the text format escapes it (model names are already plain: names.py)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
