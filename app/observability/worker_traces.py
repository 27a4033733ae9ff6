"""The console's slowest recent traced requests from every worker process (`--workers N`).

Each worker keeps its own recent traced requests (tracing.py `RecentTraces`), and
/console/traces reaches one worker: with several, the console showed that worker's alone,
a different set on each refresh. Now each worker with tracing on writes its slowest `SHOWN`
to `<metrics_dir>/<pid>.traces.json` every `TRACES_SNAPSHOT_S` (when they changed), and the
worker that answers shows the slowest `SHOWN` of its own and the other live workers'. A
worker that is gone takes its traces with it: they were recent requests of a process that
no longer serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.observability.snapshots import Published

SUFFIX = ".traces.json"
TRACES_SNAPSHOT_S = 1.0
SHOWN = 10
Trace = dict[str, Any]
"""One traced request as the console shows it (tracing.py `TraceRecord`'s fields)."""


class WorkerTraces:
    """This worker's slowest recent traces for the others, and the slowest of every worker."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.published = Published(folder, SUFFIX, pid or os.getpid(), "traces")

    def write(self, own: list[Trace]) -> None:
        self.published.publish(own)

    def slowest(self, own: list[Trace], count: int = SHOWN) -> list[Trace]:
        """The `count` slowest of `own` (this worker's, as of now) and the live other workers'."""
        live, _ = self.published.others(retired=False)  # a gone worker's traces go with it
        theirs = [t for traces in live if isinstance(traces, list) for t in traces
                  if isinstance(t, dict) and isinstance(t.get("duration_ms"), (int, float))]
        return sorted([*own, *theirs], key=lambda t: t["duration_ms"], reverse=True)[:count]
