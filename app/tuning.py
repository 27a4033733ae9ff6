"""Process tuning for serving on a few cores: the garbage collector, thread priorities, the heap.

The first two follow from one fact: the event loop thread runs every request's Python code
and feeds every batch, so it is the bottleneck; anything that stalls it or takes its core
costs throughput and tail latency (measurements in docs/benchmarks.md). The heap's settings
keep the resident size where the requests and models in service need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable

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


def name_os_thread() -> None:
    """Give the calling thread its Python name in the system as well (its first 15 bytes,
    the kernel's limit), where `top -H`, `ps -L` and /proc/<pid>/task/*/comm show it: a
    thread pool's threads are otherwise all "python", and CPU time by thread (the
    inference threads against the event loop, load_tests/server.py) could not tell them
    apart. Linux only; elsewhere, or where /proc is not writable, this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    name = threading.current_thread().name.encode("ascii", "replace")[:15]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass


def start_inference_thread(niceness: int) -> None:
    """An inference thread's start (the initializer of app/batching/runner.py's pool): named,
    and below the event loop's priority."""
    name_os_thread()
    lower_thread_priority(niceness)


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


def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (malloc_trim and mallopt are glibc's: not musl, not macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
_M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)

HEAP_ARENAS = 1
"""glibc arenas (separate heaps) a serving process keeps. glibc gives threads arenas of their
own, up to 8 per core, and malloc_trim hands back only the free pages inside an extra arena,
never the free space at its end, which glibc keeps up to twice its adaptive mmap threshold
(up to 64 MiB) once blocks that large were freed: after a burst of large requests each
decode thread's arena held tens of MB for good (the hostile suite ended 110 MB up). With one
heap, malloc_trim reaches all of it; most allocations, the small ones, come from each
thread's own cache (tcache) without the heap's lock. Measured in docs/benchmarks.md ("One
heap")."""


def one_heap() -> bool:
    """Keep every thread's allocations in one heap (HEAP_ARENAS), so that return_free_memory
    reaches them all; False where that cannot be done, or the environment already says how
    many (MALLOC_ARENA_MAX, glibc's own variable, read as the process started: left as given).

    Call it first thing in a process, before it starts threads: glibc fixes the number of
    arenas when a second thread first allocates. A process started later (a worker) is
    given MALLOC_ARENA_MAX=HEAP_ARENAS in its environment instead, by whoever starts it.
    """
    if _LIBC is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, HEAP_ARENAS))


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the system; False where that cannot be done.

    A large body or answer is freed when its request ends, but glibc keeps the pages in
    its heap, so the resident size stays at its peak after a burst of large requests.
    malloc_trim returns them (all of them in one heap: one_heap). It walks the heap under
    its lock: call it off the event loop, after large requests or an unload only (MemoryReturn).
    """
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


class MemoryReturn:
    """return_free_memory a moment after it is asked for, off the event loop, once for all the
    asks in between (a burst of large requests, a model unloaded: one walk of the heap)."""

    def __init__(self, after_s: float, trim: Callable[[], object] = return_free_memory,
                 unless: Callable[[], bool] | None = None) -> None:
        self.after_s = after_s
        self.trim = trim
        self.unless = unless  # asked again when the moment comes: e.g. large bodies held again
        self._pending = False

    def ask(self) -> None:
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_later(self.after_s, self._return)

    def _return(self) -> None:
        self._pending = False
        if self.unless is None or not self.unless():
            # A shutdown's unloads ask too; once the loop's executor is shut down the process
            # is ending, and there is nothing to hand back.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().run_in_executor(None, self.trim)
