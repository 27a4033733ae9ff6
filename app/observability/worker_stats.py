"""Triton's statistics for every worker process (`--workers N`), whichever worker answers.

Each worker counts what its own batches ran (stats.py). With several workers, a statistics
call (HTTP's /v2/models/.../stats, gRPC's ModelStatistics) reaches one of them, and that
worker's figures alone were a part of the model's: perf_analyzer, which reads them at each end
of a measurement, showed half the inferences its client had counted against two workers. Now
each worker writes its statistics to `<metrics_dir>/<pid>.stats.json` every
`STATS_SNAPSHOT_S` (when they changed), and the worker that answers adds the others' figures
to its own, for the model versions it serves: counts and durations add up, the last
inference is the latest. Another worker's figures are at most `STATS_SNAPSHOT_S` old: short
beside perf_analyzer's measurement windows (seconds), whose two ends lag alike.

A worker that exits or dies leaves its last figures behind (snapshots.py), and they stay in
every sum, as its metrics stay in /metrics: the counts perf_analyzer subtracts never go
backwards when a worker is replaced. They stay across a reload of the version too, where
Triton starts a reloaded version's figures from zero (the live workers here do): a gone
worker's figures carry no mark of which load of the version they counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from app.observability.snapshots import Published

SUFFIX = ".stats.json"
STATS_SNAPSHOT_S = 0.2
Statistics = dict[str, Any]
"""One model version's, as Triton's statistics extension writes them (ModelStats.as_triton)."""


class WorkerStats:
    """This worker's statistics for the others, and every worker's statistics summed."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.published = Published(folder, SUFFIX, pid or os.getpid(), "statistics")

    def write(self, own: list[Statistics]) -> None:
        """This worker's statistics for the others, where they changed since last written."""
        self.published.publish(own)

    def retire(self, own: list[Statistics]) -> None:
        """At exit: the last figures stay in every sum."""
        self.published.retire(own)

    def summed(self, own: list[Statistics]) -> list[Statistics]:
        """`own` (this worker's, as of now), each with the other workers' figures for the same
        model version added, those of workers that are gone included."""
        live, retired = self.published.others()
        theirs: dict[tuple[object, object], list[Statistics]] = {}  # by model version, gathered once
        for entries in [*live, *retired]:
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict):
                    theirs.setdefault((entry.get("name"), entry.get("version")), []).append(entry)
        return [sum_of(mine, theirs.get((mine["name"], mine["version"]), [])) for mine in own]


def sum_of(mine: Statistics, theirs: Iterable[Statistics]) -> Statistics:
    """One model version's statistics, `mine` with each of `theirs` added (a new dict: neither
    is changed)."""
    total = orjson.loads(orjson.dumps(mine))
    for other in theirs:
        total["inference_count"] += other["inference_count"]
        total["execution_count"] += other["execution_count"]
        total["last_inference"] = max(total["last_inference"], other["last_inference"])
        for kind, duration in other["inference_stats"].items():
            _add(total["inference_stats"].setdefault(kind, {"count": 0, "ns": 0}), duration)
        sizes = {b["batch_size"]: b for b in total["batch_stats"]}
        for batch in other["batch_stats"]:
            into = sizes.get(batch["batch_size"])
            if into is None:
                sizes[batch["batch_size"]] = orjson.loads(orjson.dumps(batch))
                continue
            for part in ("compute_input", "compute_infer", "compute_output"):
                _add(into[part], batch[part])
        total["batch_stats"] = [sizes[size] for size in sorted(sizes)]
    return total


def _add(into: dict[str, int], duration: dict[str, int]) -> None:
    into["count"] += duration["count"]
    into["ns"] += duration["ns"]
