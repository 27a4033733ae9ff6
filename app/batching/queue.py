"""One model's queue of requests: bounded admission, and batches taken from it.

It owns `put` and `wait_for_batch` and the row accounting between them (the shape of Ray
Serve's `_BatchQueue`); running batches is app/batching/runner.py's job.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Sequence

from app.batching.policy import BatchPolicy, QueueBounds
from app.batching.request import Chunk, PendingRequest
from app.errors import InvalidInput, PayloadTooLarge, QueueFull


class BatchQueue:
    def __init__(self, name: str, policy: BatchPolicy, group_by_length: bool,
                 on_hang_up: Callable[[PendingRequest], None] | None = None, exact_shapes: bool = False) -> None:
        self.name = name
        self.policy = policy
        self.group_by_length = group_by_length
        self.exact_shapes = exact_shapes
        """Batch a request only with requests whose tensors have its shapes but for the first
        axis: for models whose padding is not masked (app/completion.py `pads_unmasked`)."""
        self.on_hang_up = on_hang_up  # told of each request dropped because its client hung up
        # Kept in the order batches take them: by priority level, then (DELAY's) those not late
        # before those late, then as they came.
        self._chunks: deque[Chunk] = deque()
        # Queue bounds by level (a request's `priority`): 0, requests without levels; 1.. each level's.
        self._bounds = [policy.queue_bounds, *policy.level_queues]
        self._rejects = any(b.timeout_s and not b.delay for b in self._bounds)  # timeouts that refuse
        self._delays = any(b.timeout_s and b.delay for b in self._bounds)  # timeouts that move back
        self._queued_at = [0] * len(self._bounds)  # requests queued, by level
        self._rows = 0
        self._bytes = 0.0
        self._arrived = asyncio.Event()  # set while anything is queued
        self._full = asyncio.Event()  # set once a whole batch is queued
        self._empty = asyncio.Event()  # set while nothing is queued
        self._empty.set()

    @property
    def rows(self) -> int:
        """Rows queued, counting those of abandoned requests not yet dropped."""
        return self._rows

    @property
    def bytes(self) -> float:
        return self._bytes

    @property
    def requests(self) -> int:
        """Requests with rows queued: a request has one chunk here at a time (a split leaves
        its rest in place)."""
        return len(self._chunks)

    def level_of(self, priority: int) -> int:
        """The level a request asking for `priority` is queued at: without levels, the one
        (0); with them, 0 is the default level and one past the last is the client's mistake."""
        levels = self.policy.priority_levels
        if not levels:
            return 0
        if not priority:
            return self.policy.default_priority_level
        if priority > levels:
            raise InvalidInput(f"parameters.priority {priority}: model {self.name!r} has priority levels 1 (the "
                               f"highest) to {levels}; 0 or none is its default, {self.policy.default_priority_level}")
        return priority

    def put(self, request: PendingRequest) -> None:
        """Queue a request at its level (`request.priority`, from `level_of`), behind those of
        its level and ahead of lower ones, or refuse it: 413 if it could never fit, 503 while
        the queue is full, in rows or in bytes, or its level's queue in requests."""
        limit, byte_limit = self.policy.max_queue_size, self.policy.max_queue_bytes
        if request.rows > limit:  # retrying would not help
            raise PayloadTooLarge(f"the request has {request.rows} items; model {self.name!r} queues at most {limit}")
        if request.bytes > byte_limit:
            raise PayloadTooLarge(f"the request's inputs take {request.bytes:,.0f} bytes; model {self.name!r} "
                                  f"queues at most {byte_limit:,}")
        if self._rows + request.rows > limit or self._bytes + request.bytes > byte_limit:
            raise QueueFull(f"model {self.name!r} has {self._rows} items ({self._bytes:,.0f} bytes) queued "
                            f"(limits {limit} items, {byte_limit:,} bytes); retry later", self.policy.retry_after_s)
        level = request.priority
        most, queued = self._bounds[level].max_requests, self._queued_at[level]
        if 0 < most <= queued:
            at = f" of priority {level}" if level else ""
            raise QueueFull(f"model {self.name!r} has {queued} requests{at} queued, its queue policy's "
                            f"max_queue_size; retry later", self.policy.retry_after_s)
        chunks, chunk = self._chunks, Chunk(request, 0, request.rows)
        if chunks and (chunks[-1].request.priority > level or chunks[-1].delayed):  # ahead of lower levels', late ones
            chunks.insert(bisect.bisect_right(chunks, (level, False), key=_place), chunk)
        else:
            chunks.append(chunk)
        self._queued_at[level] += 1
        self._rows += request.rows
        self._bytes += request.bytes
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

    async def wait_for_batch(self, wait: bool = True) -> list[Chunk]:
        """Take up to max_batch_size rows (empty if every queued request was abandoned).
        With `wait`, first wait until a whole batch is queued, the oldest request has
        waited max_queue_delay_s, or `wake()`; without, take what is queued now."""
        self._drop_abandoned_head()
        if wait and self._chunks and self._rows < self.policy.max_batch_size:
            # The oldest request's wait: with levels, not always the first (fewer than a batch are queued).
            oldest = (min(c.request.enqueued_at for c in self._chunks) if self.policy.priority_levels or self._delays
                      else self._chunks[0].request.enqueued_at)
            due = oldest + self.policy.max_queue_delay_s
            remaining = due - time.monotonic()
            if remaining > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), remaining)
                except TimeoutError:
                    pass
        return self._take()

    def wake(self) -> None:
        """End a wait for a fuller batch now (the model went idle: waiting no longer pays)."""
        self._full.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def fail_all(self, error: BaseException) -> None:
        for chunk in self._chunks:
            chunk.request.fail(error)
        self._chunks.clear()
        self._queued_at = [0] * len(self._bounds)
        self._rows = 0
        self._bytes = 0.0
        self._mark_if_empty()

    def _take(self) -> list[Chunk]:
        """Up to max_batch_size rows, oldest first; with length grouping, the oldest chunk
        plus the queued chunks closest to its length. A chunk that does not fit is split:
        its rest stays queued in place. When the oldest chunk is large (at least
        max_batch_size rows), the batch takes large chunks only, up to max_large_batch_size."""
        if self._delays:
            self._move_back_late()
        self._drop_abandoned_head()
        batch: list[Chunk] = []
        taken: set[int] = set()
        capacity = self.policy.max_batch_size
        large_only = bool(self._chunks) and self._is_large(self._chunks[0])
        if large_only:
            capacity = self.policy.max_large_batch_size
        for looked, i in enumerate(self._candidates()):
            if capacity == 0 or (large_only and looked > self.policy.grouping_window):
                break  # (a scan for large chunks past small ones is bounded like length grouping)
            chunk = self._chunks[i]
            if self._abandoned(chunk):
                taken.add(i)
                self._uncount(chunk.request, chunk.rows)
                continue
            if large_only and not self._is_large(chunk):
                continue  # stays queued for the next batch of small requests
            if chunk.rows > capacity:
                batch.append(chunk.split(capacity))
                self._uncount(chunk.request, capacity)
                break
            batch.append(chunk)
            taken.add(i)
            self._uncount(chunk.request, chunk.rows)
            capacity -= chunk.rows
        self._remove(taken)
        return batch

    def _is_large(self, chunk: Chunk) -> bool:
        """A request that fills a batch by itself (BatchPolicy.large), where large requests
        batch beyond max_batch_size: alone, it would run as a batch of one."""
        policy = self.policy
        return policy.large(chunk.rows) and policy.max_batch_size < policy.max_large_batch_size

    def _candidates(self) -> Sequence[int]:
        """Queue positions in the order a batch takes them."""
        if self.exact_shapes and len(self._chunks) > 1:
            window = min(len(self._chunks), self.policy.grouping_window + 1)
            head = _item_shapes(self._chunks[0])
            return [0, *(i for i in range(1, window) if _item_shapes(self._chunks[i]) == head)]
        if not self.group_by_length or len(self._chunks) <= 1:
            return range(len(self._chunks))
        window = min(len(self._chunks), self.policy.grouping_window + 1)
        chunks = self._chunks
        target = chunks[0].request.length
        rest = sorted(range(1, window), key=lambda i: (_place(chunks[i]),  # a higher level first
                                                       abs(chunks[i].request.length - target)))
        return [0, *rest]

    def _remove(self, taken: set[int]) -> None:
        queued_at = self._queued_at
        if taken == set(range(len(taken))):  # a prefix: the common FIFO case
            for _ in taken:
                queued_at[self._chunks.popleft().request.priority] -= 1
        else:
            for i in taken:
                queued_at[self._chunks[i].request.priority] -= 1
            self._chunks = deque(c for i, c in enumerate(self._chunks) if i not in taken)
        self._mark_if_empty()

    def _move_back_late(self) -> None:
        """Triton's DELAY: a request wholly queued past its level's timeout goes behind the
        requests of its level that are not late (ahead of lower levels' still). Looked for
        among the first grouping_window requests, as far as a batch looks."""
        chunks, now = self._chunks, time.monotonic()
        window = min(len(chunks), self.policy.grouping_window + 1)
        late = [i for i in range(window) if _late(chunks[i], self._bounds[chunks[i].request.priority], now)]
        if not late:
            return
        moved = [chunks[i] for i in late]
        late_set = set(late)
        self._chunks = chunks = deque(c for i, c in enumerate(chunks) if i not in late_set)
        for chunk in moved:  # each behind the late ones of its level before it
            chunk.delayed = True
            chunks.insert(bisect.bisect_right(chunks, (chunk.request.priority, True), key=_place), chunk)

    def _drop_abandoned_head(self) -> None:
        while self._chunks and self._abandoned(self._chunks[0]):
            chunk = self._chunks.popleft()
            self._queued_at[chunk.request.priority] -= 1
            self._uncount(chunk.request, chunk.rows)
        self._mark_if_empty()

    def _abandoned(self, chunk: Chunk) -> bool:
        request = chunk.request
        was_hung_up = request.hung_up
        if not request.abandoned():
            return self._rejects and self._timed_out(chunk)
        if request.hung_up and not was_hung_up and self.on_hang_up is not None:
            self.on_hang_up(request)
        return True

    def _timed_out(self, chunk: Chunk) -> bool:
        """Refused now (503) if it has waited past its level's queue timeout with none of its
        rows taken yet (the rest of a split request runs: its first rows did)."""
        bounds = self._bounds[chunk.request.priority]
        timeout_s = bounds.timeout_s
        if chunk.start or not timeout_s or bounds.delay:
            return False
        waited = time.monotonic() - chunk.request.enqueued_at
        if waited <= timeout_s:
            return False
        chunk.request.fail(QueueFull(
            f"the request waited {waited * 1000:.1f} ms in the queue of model {self.name!r}, past its queue "
            f"policy's timeout of {timeout_s * 1000:g} ms; retry later", self.policy.retry_after_s))
        return True

    def _uncount(self, request: PendingRequest, rows: int) -> None:
        self._rows -= rows
        self._bytes -= rows * request.row_bytes

    def _mark_if_empty(self) -> None:
        if not self._chunks:
            self._arrived.clear()
            self._empty.set()


def _place(chunk: Chunk) -> tuple[int, bool]:
    """Where a chunk stands in the queue: its level, then late (DELAY's) or not."""
    return chunk.request.priority, chunk.delayed


def _late(chunk: Chunk, bounds: QueueBounds, now: float) -> bool:
    """Past its level's DELAY timeout, wholly queued, and not moved back already."""
    return (bounds.delay and bool(bounds.timeout_s) and not chunk.delayed and not chunk.start
            and now - chunk.request.enqueued_at > bounds.timeout_s)


def _item_shapes(chunk: Chunk) -> tuple[tuple[int, ...], ...]:
    return tuple(array.shape[1:] for array in chunk.request.inputs.values())
