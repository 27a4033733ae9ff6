"""Deadlines: one event-loop timer for every watched request instead of one per request.

A loop timer started and cancelled for every request is a measurable cost on the event
loop (docs/benchmarks.md, "Figures behind the code"), which is the service's bottleneck
at high request rates. Watched items wait in a heap ordered by their due time; one timer
is set for the earliest. A deadline is counted from the request's arrival, and requests
mostly arrive in due order, so new items rarely move the timer, and answered items leave
from the heap's head as the next ones are watched.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Watched(Protocol):
    def done(self) -> bool: ...


class Deadlines:
    def __init__(self, expire: Callable[[Any, float], None]) -> None:
        self._expire = expire  # called with each item still pending at its deadline, and its timeout
        self._heap: list[tuple[float, int, Watched, float]] = []
        self._order = itertools.count()  # ties never compare the items themselves
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")

    def watch(self, item: Watched, due: float, timeout_s: float) -> None:
        """Expire `item` if it is still pending at `due` (a time.monotonic() value)."""
        heap = self._heap
        while heap and heap[0][2].done():
            heapq.heappop(heap)
        heapq.heappush(heap, (due, next(self._order), item, timeout_s))
        if due < self._timer_due:
            self._schedule(due)

    def _schedule(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._sweep)
        self._timer_due = due

    def _sweep(self) -> None:
        self._timer, self._timer_due = None, float("inf")
        heap, now = self._heap, time.monotonic()
        while heap and (heap[0][0] <= now or heap[0][2].done()):
            _, _, item, timeout_s = heapq.heappop(heap)
            if not item.done():
                self._expire(item, timeout_s)
        if heap:
            self._schedule(heap[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = None, float("inf")
        self._heap.clear()
