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
backwards when a worker is replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.observability.snapshots import Snapshots

SUFFIX = ".stats.json"
STATS_SNAPSHOT_S = 0.2
Statistics = dict[str, Any]
"""One model version's, as Triton's statistics extension writes them (ModelStats.as_triton)."""

logger = logging.getLogger(__name__)


class WorkerStats:
    """This worker's statistics file, and every worker's statistics summed."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.files = Snapshots(folder, SUFFIX, pid or os.getpid())
        self._written: bytes | None = None
        self._failing = False
        with contextlib.suppress(OSError):  # else writing reports it
            folder.mkdir(parents=True, exist_ok=True)

    def write(self, own: list[Statistics]) -> None:
        """This worker's statistics for the others, where they changed since last written."""
        data = json.dumps(own, separators=(",", ":")).encode()
        if data == self._written:
            return
        try:
            self._write(data)
        except OSError as e:
            if not self._failing:  # once per spell of failures, not five times a second
                self._failing = True
                logger.warning("cannot write this worker's statistics to %s (%s): statistics answered by "
                               "other workers miss its figures until it can", self.files.folder, e)
            return
        self._failing = False
        self._written = data

    def _write(self, data: bytes) -> None:
        try:
            self.files.write(data)
        except OSError:
            self.files.folder.mkdir(parents=True, exist_ok=True)  # removed: made again
            self.files.write(data)

    def retire(self, own: list[Statistics]) -> None:
        """At exit: the last figures stay in every sum."""
        self._written = None
        self.write(own)
        self.files.retire()

    def summed(self, own: list[Statistics]) -> list[Statistics]:
        """`own` (this worker's, as of now), each with the other workers' figures for the same
        model version added, those of workers that are gone included."""
        others = self.files.others()
        theirs = [entry for text in [*others.live.values(), *others.retired] for entry in _entries(text)]
        return [sum_of(mine, [t for t in theirs if (t.get("name"), t.get("version")) == (mine["name"], mine["version"])])
                for mine in own]


def _entries(text: str) -> list[Statistics]:
    """A worker's file's entries; nothing from a file that is not what a worker writes."""
    try:
        entries = json.loads(text)
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def sum_of(mine: Statistics, theirs: Iterable[Statistics]) -> Statistics:
    """One model version's statistics, `mine` with each of `theirs` added (a new dict: neither
    is changed)."""
    total = json.loads(json.dumps(mine))
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
                sizes[batch["batch_size"]] = json.loads(json.dumps(batch))
                continue
            for part in ("compute_input", "compute_infer", "compute_output"):
                _add(into[part], batch[part])
        total["batch_stats"] = [sizes[size] for size in sorted(sizes)]
    return total


def _add(into: dict[str, int], duration: dict[str, int]) -> None:
    into["count"] += duration["count"]
    into["ns"] += duration["ns"]
