"""Triton statistics: what one batch adds, per request and per batch size."""

from __future__ import annotations

from app.batching import BatchRecord
from app.observability.stats import ModelStats


def test_a_batch_counts_for_each_of_its_requests_and_once_for_its_size() -> None:
    stats = ModelStats()
    stats.record_batch(BatchRecord(rows=5, queue_waits_s=[0.001, 0.002, 0.003], compute_s=0.010, ok=True,
                                   input_s=0.002, output_s=0.001))
    triton = stats.as_triton("m", "1")
    inference = triton["inference_stats"]
    assert triton["inference_count"] == 5
    assert triton["execution_count"] == 1
    assert inference["queue"] == {"count": 3, "ns": 6_000_000}
    assert inference["compute_infer"] == {"count": 3, "ns": 30_000_000}
    assert inference["compute_input"] == {"count": 3, "ns": 6_000_000}
    assert inference["compute_output"] == {"count": 3, "ns": 3_000_000}
    (batch,) = triton["batch_stats"]
    assert batch["batch_size"] == 5
    assert batch["compute_infer"] == {"count": 1, "ns": 10_000_000}
