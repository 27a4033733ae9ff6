"""Statistics of a load run: rates, latency percentiles, error accounting."""

from __future__ import annotations

import math
import resource
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


def ratio_cells(ratios: Sequence[float]) -> str:
    """Two cells of a paired-rounds table: each round's ratio, and their median."""
    return f"{', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.3f}"


NOT_SENT = -1  # open loop: the client had max_outstanding requests open and skipped this one


@dataclass
class Sample:
    latency_s: float
    status: int  # HTTP status; 0 for a connection-level failure; NOT_SENT


@dataclass
class Summary:
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    items_per_request: int = 1
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.requests_per_s * self.items_per_request


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not sorted_values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Sequence[Sample], duration_s: float, items_per_request: int = 1) -> Summary:
    """Latency percentiles over successful requests only; every failure is counted by status."""
    ok_latencies = sorted(s.latency_s * 1000 for s in samples if 200 <= s.status < 300)
    names = {0: "connection", NOT_SENT: "not-sent"}
    errors = Counter(names.get(s.status, str(s.status)) for s in samples if not 200 <= s.status < 300)
    return Summary(
        requests=len(samples), ok=len(ok_latencies), errors=dict(sorted(errors.items())),
        duration_s=duration_s, items_per_request=items_per_request,
        p50_ms=percentile(ok_latencies, 50), p90_ms=percentile(ok_latencies, 90),
        p99_ms=percentile(ok_latencies, 99), max_ms=ok_latencies[-1] if ok_latencies else math.nan,
    )


def histogram_totals(metrics_text: str, name: str, model: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram for one model, from /metrics text."""
    return (sample_total(metrics_text, f"{name}_sum", model=model),
            sample_total(metrics_text, f"{name}_count", model=model))


def sample_total(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of a /metrics sample over the series whose labels include `labels` (0 where there
    are none), read with prometheus_client's own parser."""
    return sum(sample.value for family in text_string_to_metric_families(metrics_text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU of this process (RUSAGE_SELF) or its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
