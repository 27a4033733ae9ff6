"""Request deadlines: one event-loop timer per timeout value instead of one per request.

A uvloop timer started and cancelled for every request was a measurable cost on the event
loop (docs/benchmarks.md, "Figures behind the code"), which is the service's bottleneck at
high request rates. Requests that share a timeout reach
their deadlines in the order they arrived, so they wait in a queue whose head is always
the next one due, and one timer, set for the head, is enough.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any


class Deadlines:
    def __init__(self, expire: Callable[[asyncio.Future[Any], float], None]) -> None:
        self._expire = expire  # called with each future still pending at its deadline, and its timeout
        self._queues: dict[float, deque[tuple[float, asyncio.Future[Any]]]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def watch(self, future: asyncio.Future[Any], timeout_s: float) -> None:
        """Expire `future` if it is still pending `timeout_s` from now."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(timeout_s)
        if queue is None:
            queue = self._queues[timeout_s] = deque()
        # Answered requests leave from the head here, so the queue holds about the
        # requests in flight rather than every request of the last `timeout_s`.
        while queue and queue[0][1].done():
            queue.popleft()
        due = loop.time() + timeout_s
        queue.append((due, future))
        if timeout_s not in self._timers:
            self._timers[timeout_s] = loop.call_at(due, self._sweep, timeout_s)

    def _sweep(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queues[timeout_s]
        now = loop.time()
        while queue and (queue[0][0] <= now or queue[0][1].done()):
            _, future = queue.popleft()
            if not future.done():
                self._expire(future, timeout_s)
        if queue:
            self._timers[timeout_s] = loop.call_at(queue[0][0], self._sweep, timeout_s)
        else:
            del self._timers[timeout_s]

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queues.clear()
