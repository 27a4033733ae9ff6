"""Per-model inference statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from app.batching import BatchRecord


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """`count` occurrences that each took `seconds`."""
        self.count += count
        self.ns += int(seconds * 1e9) * count

    def add_each(self, seconds: list[float]) -> None:
        """One occurrence per entry of `seconds`."""
        self.count += len(seconds)
        self.ns += int(sum(seconds) * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    cache_hit: _Duration = field(default_factory=_Duration)
    cache_miss: _Duration = field(default_factory=_Duration)
    batches: dict[int, tuple[_Duration, _Duration, _Duration]] = field(
        default_factory=lambda: defaultdict(lambda: (_Duration(), _Duration(), _Duration())))

    def record_batch(self, record: BatchRecord) -> None:
        self.execution_count += 1
        self.queue.add_each(record.queue_waits_s)
        # Per request, as Triton does (each request of the batch took the batch's time);
        # perf_analyzer requires the three counts equal.
        requests = len(record.queue_waits_s)
        self.compute_input.add(record.input_s, requests)
        self.compute_infer.add(record.compute_s, requests)
        self.compute_output.add(record.output_s, requests)
        per_batch = self.batches[record.rows]
        for duration, seconds in zip(per_batch, (record.input_s, record.compute_s, record.output_s), strict=True):
            duration.add(seconds)
        if record.answered_rows:
            self.inference_count += record.answered_rows
            self.last_inference_ms = int(time.time() * 1000)

    def record_steps(self, rows: int, queue_s: float, compute_s: float) -> None:
        """One answered request of an ensemble (app/ensemble.py), which runs no batch of its own:
        its steps' queue waits and compute added up, as Triton counts an ensemble's (one queue
        and one compute entry per request: perf_analyzer finds a model's version by its queue
        count, and requires the three compute counts equal)."""
        self.queue.add(queue_s)
        self.compute_input.add(0.0)
        self.compute_infer.add(compute_s)
        self.compute_output.add(0.0)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def record_request(self, seconds: float, ok: bool) -> None:
        (self.success if ok else self.fail).add(seconds)

    def record_cache_lookup(self, hit: bool, seconds: float) -> None:
        """A response cache lookup (app/response_cache.py): a hit is also a success, counted
        by record_request, but runs no batch."""
        (self.cache_hit if hit else self.cache_miss).add(seconds)
        if hit:
            self.last_inference_ms = int(time.time() * 1000)

    def record_cache_insert(self, seconds: float) -> None:
        """A miss's answer kept: its time is the miss's, as Triton counts it."""
        self.cache_miss.ns += int(seconds * 1e9)

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": self.cache_hit.as_dict(),
                "cache_miss": self.cache_miss.as_dict(),
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": i.as_dict(), "compute_infer": c.as_dict(),
                 "compute_output": o.as_dict()}
                for size, (i, c, o) in sorted(self.batches.items())
            ],
        }
