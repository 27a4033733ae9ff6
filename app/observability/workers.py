"""One /metrics for every worker process (`--workers N`).

Each worker keeps its own registry, with the event-loop histograms that make the request
path cheap (loop_histogram.py), and writes its whole exposition to `<metrics_dir>/<pid>.prom`
every second and before each scrape it answers. A scrape, whichever worker answers it, reads
every live worker's file and merges them: the service's counters and histograms add up
across workers, queue depths and active sequences add up, other gauges (model state,
stalled, breaker open) take the highest worker's value, and the per-process metrics
(`process_*`, `python_*`) stay per worker, labelled `worker="<pid>"`.

Counters never go backwards: a worker that exits or dies leaves its last snapshot behind,
renamed `retired-<pid>-<ns>.prom` (one atomic rename, by whichever worker sees it first),
and the retired snapshots' counters and histograms stay in every merge (their gauges and
process metrics do not: they describe a process that is gone). A snapshot that cannot be
written (the folder unwritable or removed) is tried again after recreating the folder;
failing that, it is counted (`ortserve_metrics_snapshot_failures_total`), logged once
until it works again, and /metrics answers with what it can read, this worker's own
metrics at least. What a removed folder held of retired workers is lost with it.

prometheus-client's own multiprocess mode was not used: it keeps every value in mmap'd
files updated under a lock on each observation, which is the cost the loop histograms
exist to avoid, and it cannot take custom collectors. The price here is that another
worker's figures are up to a second old.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from app.observability.snapshots import Snapshots

PER_PROCESS = ("process_", "python_")
SUMMED_GAUGES = frozenset({"ortserve_queue_depth", "nv_inference_pending_request_count",
                           "ortserve_sequences_active"})
SNAPSHOT_S = 1.0
SUFFIX = ".prom"
KEPT_WHEN_RETIRED = frozenset({"counter", "histogram", "summary"})

logger = logging.getLogger(__name__)


class WorkerMetrics:
    """This worker's side: its snapshot file, and the merged exposition of every worker."""

    def __init__(self, registry: CollectorRegistry, folder: Path, pid: int | None = None,
                 failures: Counter | None = None) -> None:
        self.registry = registry
        self.files = Snapshots(folder, SUFFIX, pid or os.getpid())
        self.failures = failures
        self._failing = False

    def write_snapshot(self) -> bytes:
        """This worker's exposition, written for the others to read; returned for this one
        whether or not it could be written."""
        text = generate_latest(self.registry)
        try:
            self.files.write(text)  # the folder made again where it was removed
        except OSError as e:
            self._report(e)
            return text
        if self._failing:
            self._failing = False
            logger.info("metrics snapshots are written to %s again", self.files.folder)
        return text

    def _report(self, error: OSError) -> None:
        if self.failures is not None:
            self.failures.inc()
        if not self._failing:  # once, not every second
            self._failing = True
            logger.error("cannot write this worker's metrics snapshot to %s (%s): /metrics of other workers "
                         "will miss its figures until it can", self.files.folder, error)

    def retire_snapshot(self) -> None:
        """At exit: the last figures stay in the merge, so counters never go backwards."""
        with contextlib.suppress(OSError):
            self.files.write(generate_latest(self.registry))
        self.files.retire()

    def exposition(self) -> bytes:
        """Every worker's metrics, merged: this one's as of now, the others' as last written,
        and the counters of those that are gone."""
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Merged(self.families()))
        return generate_latest(merged)

    def families(self) -> list[Metric]:
        """What `exposition` writes, as metric families (the console's summary reads them)."""
        own = self.write_snapshot().decode()
        others = self.files.others()
        return merge({self.files.pid: own, **others.live}, others.retired)


def merge(snapshots: dict[int, str], retired: Iterable[str] = ()) -> list[Metric]:
    """Text expositions by worker pid, and those of retired workers -> one set of metric
    families (rules: module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    expositions = [(str(pid), text, False) for pid, text in sorted(snapshots.items())]
    expositions += [("", text, True) for text in retired]
    for pid, text, gone in expositions:
        for family in text_string_to_metric_families(text):
            if gone and (family.type not in KEPT_WHEN_RETIRED or family.name.startswith(PER_PROCESS)):
                continue
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            per_process = family.name.startswith(PER_PROCESS)
            for sample in family.samples:
                labels = dict(sample.labels, worker=pid) if per_process else sample.labels
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
