"""Process tuning for serving on a few cores: the garbage collector and thread priorities.

Both follow from one fact: the event loop thread runs every request's Python code and
feeds every batch, so it is the bottleneck; anything that stalls it or takes its core
costs throughput and tail latency (measurements in docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

YOUNG_GENERATION_THRESHOLD = 10_000


def settle_heap(young_threshold: int = YOUNG_GENERATION_THRESHOLD) -> None:
    """Keep the cyclic garbage collector out of the request path; call once loaded.

    Everything alive once the models are loaded (modules, vocabularies, sessions) lives
    as long as the process, yet every full collection walked all of it again: pauses of
    tens of milliseconds about once a second under load, which set the p99 latency
    (docs/benchmarks.md, "Figures behind the code"). Frozen,
    those objects are skipped. Requests make many short-lived containers (parsed JSON,
    futures) that reference counting frees; the default young-generation threshold (700)
    still ran a collection every few requests, each walking every request in flight.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)


def lower_thread_priority(niceness: int) -> None:
    """Run the calling thread `niceness` steps below its current CPU scheduling priority.

    For inference worker threads: when the cores are oversubscribed (event loop, ORT
    threads, a sidecar), the loop that feeds the batches should win. Without spare CPU
    the workers still get their share; with spare cores nothing changes. Linux only,
    where a thread has its own nice value; elsewhere this does nothing.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))
    except OSError as e:  # e.g. a seccomp profile that forbids it: serve anyway
        logger.warning("could not lower the priority of inference thread %d: %s", thread, e)
