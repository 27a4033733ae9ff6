"""One model's queue of requests: bounded admission, and batches taken from it.

It owns `put` and `wait_for_batch` and the row accounting between them (the shape of Ray
Serve's `_BatchQueue`); running batches is app/batching/runner.py's job.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

from app.batching.policy import BatchPolicy
from app.batching.request import Chunk, PendingRequest
from app.errors import PayloadTooLarge, QueueFull


class BatchQueue:
    def __init__(self, name: str, policy: BatchPolicy, group_by_length: bool) -> None:
        self.name = name
        self.policy = policy
        self.group_by_length = group_by_length
        self._chunks: deque[Chunk] = deque()
        self._rows = 0
        self._arrived = asyncio.Event()  # set while anything is queued
        self._full = asyncio.Event()  # set once a whole batch is queued
        self._empty = asyncio.Event()  # set while nothing is queued
        self._empty.set()

    @property
    def rows(self) -> int:
        """Rows queued, counting those of abandoned requests not yet dropped."""
        return self._rows

    def put(self, request: PendingRequest) -> None:
        """Queue a request, or refuse it: 413 if it could never fit, 503 while the queue is full."""
        limit = self.policy.max_queue_size
        if request.rows > limit:  # retrying would not help
            raise PayloadTooLarge(f"the request has {request.rows} items; model {self.name!r} queues at most {limit}")
        if self._rows + request.rows > limit:
            raise QueueFull(f"model {self.name!r} has {self._rows} items queued (limit {limit}); retry later",
                            self.policy.retry_after_s)
        self._chunks.append(Chunk(request, 0, request.rows))
        self._rows += request.rows
        self._arrived.set()
        self._empty.clear()
        if self._rows >= self.policy.max_batch_size:
            self._full.set()

    async def wait_for_request(self) -> None:
        """Until a live request is queued."""
        while True:
            await self._arrived.wait()
            self._drop_abandoned_head()
            if self._chunks:
                return

    async def wait_for_batch(self) -> list[Chunk]:
        """Wait until a whole batch is queued or the oldest request has waited
        max_queue_delay_s, then take up to max_batch_size rows (empty if every queued
        request was abandoned meanwhile)."""
        self._drop_abandoned_head()
        if self._chunks and self._rows < self.policy.max_batch_size:
            due = self._chunks[0].request.enqueued_at + self.policy.max_queue_delay_s
            remaining = due - time.monotonic()
            if remaining > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), remaining)
                except TimeoutError:
                    pass
        return self._take()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def fail_all(self, error: BaseException) -> None:
        for chunk in self._chunks:
            chunk.request.fail(error)
        self._chunks.clear()
        self._rows = 0
        self._mark_if_empty()

    def _take(self) -> list[Chunk]:
        """Up to max_batch_size rows, oldest first; with length grouping, the oldest chunk
        plus the queued chunks closest to its length. A chunk that does not fit is split:
        its rest stays queued in place."""
        self._drop_abandoned_head()
        batch: list[Chunk] = []
        taken: set[int] = set()
        capacity = self.policy.max_batch_size
        for i in self._candidates():
            if capacity == 0:
                break
            chunk = self._chunks[i]
            if chunk.request.abandoned:
                taken.add(i)
                self._rows -= chunk.rows
                continue
            if chunk.rows > capacity:
                batch.append(chunk.split(capacity))
                self._rows -= capacity
                break
            batch.append(chunk)
            taken.add(i)
            self._rows -= chunk.rows
            capacity -= chunk.rows
        self._remove(taken)
        return batch

    def _candidates(self) -> Sequence[int]:
        """Queue positions in the order a batch takes them."""
        if not self.group_by_length or len(self._chunks) <= 1:
            return range(len(self._chunks))
        window = min(len(self._chunks), self.policy.grouping_window + 1)
        target = self._chunks[0].request.length
        rest = sorted(range(1, window), key=lambda i: abs(self._chunks[i].request.length - target))
        return [0, *rest]

    def _remove(self, taken: set[int]) -> None:
        if taken == set(range(len(taken))):  # a prefix: the common FIFO case
            for _ in taken:
                self._chunks.popleft()
        else:
            self._chunks = deque(c for i, c in enumerate(self._chunks) if i not in taken)
        self._mark_if_empty()

    def _drop_abandoned_head(self) -> None:
        while self._chunks and self._chunks[0].request.abandoned:
            self._rows -= self._chunks.popleft().rows
        self._mark_if_empty()

    def _mark_if_empty(self) -> None:
        if not self._chunks:
            self._arrived.clear()
            self._empty.set()
