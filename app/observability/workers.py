"""One /metrics for every worker process (`--workers N`).

Each worker keeps its own registry, with the event-loop histograms that make the request
path cheap (loop_histogram.py), and writes its whole exposition to `<metrics_dir>/<pid>.prom`
every second and before each scrape it answers. A scrape, whichever worker answers it, reads
every live worker's file and merges them: the service's counters and histograms add up
across workers, queue depths add up, other gauges (model state, stalled, breaker open) take
the highest worker's value, and the per-process metrics (`process_*`, `python_*`) stay
per worker, labelled `worker="<pid>"`.

prometheus-client's own multiprocess mode was not used: it keeps every value in mmap'd
files updated under a lock on each observation, which is the cost the loop histograms
exist to avoid, and it cannot take custom collectors. The price here is that another
worker's figures are up to a second old.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

PER_PROCESS = ("process_", "python_")
SUMMED_GAUGES = frozenset({"ortserve_queue_depth"})
SNAPSHOT_S = 1.0


class WorkerMetrics:
    """This worker's side: its snapshot file, and the merged exposition of every worker."""

    def __init__(self, registry: CollectorRegistry, folder: Path, pid: int | None = None) -> None:
        self.registry = registry
        self.folder = folder
        self.pid = pid or os.getpid()
        self.path = folder / f"{self.pid}.prom"
        folder.mkdir(parents=True, exist_ok=True)

    def write_snapshot(self) -> bytes:
        """This worker's exposition, written for the others to read; returned for this one."""
        text = generate_latest(self.registry)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_bytes(text)
        temporary.replace(self.path)  # readers never see half a file
        return text

    def remove_snapshot(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def exposition(self) -> bytes:
        """Every live worker's metrics, merged; this worker's as of now."""
        snapshots = {self.pid: self.write_snapshot().decode()}
        for path in self.folder.glob("*.prom"):
            pid = int(path.stem)
            if pid == self.pid:
                continue
            if not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # a worker that died without cleaning up
                continue
            with contextlib.suppress(FileNotFoundError):  # exited between glob and read
                snapshots[pid] = path.read_text()
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Merged(merge(snapshots)))
        return generate_latest(merged)


def merge(snapshots: dict[int, str]) -> list[Metric]:
    """Text expositions by worker pid -> one set of metric families (rules: module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for pid, text in sorted(snapshots.items()):
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            per_process = family.name.startswith(PER_PROCESS)
            for sample in family.samples:
                labels = dict(sample.labels, worker=str(pid)) if per_process else sample.labels
                key = (sample.name, tuple(sorted(labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                elif family.type == "gauge" and family.name not in SUMMED_GAUGES:
                    samples[key] = max(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    for name, family in families.items():
        family.samples = [Sample(sample_name, dict(labels), value)
                          for (sample_name, labels), value in values[name].items()]
    return list(families.values())


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
