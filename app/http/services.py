"""What the routes need of the running service, in one typed object the lifespan builds
(app/main.py) and the routes are handed through `services(request)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from app import model_views
from app.errors import ModelNotReady
from app.http.budget import RequestBudget
from app.observability.log_settings import SharedLogSettings
from app.observability.metrics import Metrics
from app.observability.trace_settings import SharedTraceSettings
from app.observability.worker_stats import WorkerStats
from app.observability.worker_traces import WorkerTraces
from app.observability.workers import WorkerMetrics
from app.offload import Offload
from app.protocol.shared_memory import SharedMemoryRegions
from app.repository import ModelRepository
from app.repository.shared import RepositoryChanges
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    repository: ModelRepository
    metrics: Metrics
    budget: RequestBudget
    """Request bodies, answers and deadlines: what one request may cost."""
    offload: Offload
    """Threads for decoding and encoding too heavy for the event loop."""
    api_keys: list[bytes]
    """Accepted by the inference endpoints; empty: no key needed."""
    admin_token: bytes | None
    """The repository API's token; None: the API is off."""
    changes: RepositoryChanges
    """The repository API's load and unload, made in every worker (app/repository/shared.py)."""
    log_settings: SharedLogSettings
    """Triton's logging extension: the log's settings, changed in every worker."""
    trace_settings: SharedTraceSettings | None = None
    """Triton's trace extension: tracing on or off and its rate, changed in every worker (set
    by the lifespan once the tracer's endpoint is known)."""
    shared_memory: SharedMemoryRegions | None = None
    """Triton's system shared-memory regions, every worker's; None: the extension is off."""
    worker_metrics: WorkerMetrics | None = None
    """With several worker processes: every worker's metrics, for /metrics."""
    worker_stats: WorkerStats | None = None
    """With several worker processes: every worker's statistics, for the statistics calls."""
    worker_traces: WorkerTraces | None = None
    """With several worker processes: every worker's slowest recent traces, for the console."""
    draining: bool = False
    """Set on SIGTERM (and at shutdown): readiness answers 503 from then on."""

    def start_draining(self) -> None:
        self.draining = True

    def ready(self) -> bool:
        """/v2/health/ready's (and gRPC's ServerReady): every model that should be served is
        serving, in every worker, and this one is not draining."""
        return not self.draining and self.changes.ready()

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics (app/model_views.py), every worker's figures summed."""
        own = model_views.statistics(self.repository, name, version)
        return self.worker_stats.summed(own) if self.worker_stats is not None else own

    def share_statistics(self, last: bool = False) -> None:
        """With several workers: this one's statistics written for the others to add (every
        STATS_SNAPSHOT_S; `last`: at exit, where they stay once the worker is gone)."""
        if self.worker_stats is None:
            return
        own = model_views.statistics(self.repository)
        if last:
            self.worker_stats.retire(own)
        else:
            self.worker_stats.write(own)


def services(request: Request) -> Services:
    """The running service's (app/main.py sets them on the app it builds); 503 before its
    lifespan has built them."""
    found: Services | None = request.app.services
    if found is None:
        raise ModelNotReady("the server is still starting")
    return found
