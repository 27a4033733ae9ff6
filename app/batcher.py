"""Dynamic batching for one model: a bounded queue, a batch former and bounded in-flight runs.

Requests carry N rows (instances) of named numpy arrays. The batcher waits at most
`max_queue_delay_s` after the oldest queued row for a batch to fill up to
`max_batch_size` rows, splits requests that do not fit, runs at most
`max_inflight_batches` batches at once in worker threads (ONNX Runtime releases the
GIL), and hands each request back its own rows. It knows nothing of HTTP or ONNX.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.errors import InferenceFailed, ModelNotReady, PayloadTooLarge, QueueFull
from app.tuning import lower_thread_priority

logger = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray]
InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 64
    max_queue_delay_s: float = 0.002
    max_inflight_batches: int = 2
    # Threads that run this model's batches. Fewer than max_inflight_batches keeps the next
    # batch ready behind a running one, so the thread never idles between batches.
    inference_threads: int = 1
    max_queue_size: int = 4096
    retry_after_s: int = 1
    # Worker threads run this many steps below the event loop's CPU priority (app/tuning.py).
    worker_niceness: int = 0
    # How many queued chunks the length grouping looks at beyond the oldest one.
    grouping_window: int = 256

    @property
    def concurrent_batches(self) -> int:
        """Batches that run at the same time: one per inference thread, at most the in-flight ones."""
        return min(self.inference_threads, self.max_inflight_batches)


@dataclass(frozen=True)
class BatchRecord:
    """What one batch did, for metrics and statistics."""

    rows: int
    queue_waits_s: list[float]
    compute_s: float  # the model run, including the hand-off to and from its thread
    ok: bool
    input_s: float = 0.0  # gathering the rows into one batch
    output_s: float = 0.0  # handing each request its rows


class _Request:
    __slots__ = ("future", "inputs", "rows", "parts", "missing", "enqueued_at", "length")

    def __init__(self, inputs: Tensors, rows: int, length: int, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self.inputs = inputs
        self.rows = rows
        self.parts: list[tuple[int, dict[str, np.ndarray]]] = []
        self.missing = rows
        self.enqueued_at = time.monotonic()
        self.length = length

    def deliver(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        if self.future.done():
            return  # cancelled (deadline or client gone) or failed in another batch
        self.parts.append((start, outputs))
        self.missing -= len(next(iter(outputs.values())))
        if self.missing == 0:
            if len(self.parts) == 1:
                self.future.set_result(outputs)
                return
            self.parts.sort(key=lambda p: p[0])
            names = self.parts[0][1].keys()
            self.future.set_result({k: np.concatenate([p[1][k] for p in self.parts]) for k in names})

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class _Chunk:
    """Rows [start, stop) of one request."""

    request: _Request
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def tensors(self) -> dict[str, np.ndarray]:
        if self.start == 0 and self.stop == self.request.rows:
            return dict(self.request.inputs)
        return {k: v[self.start : self.stop] for k, v in self.request.inputs.items()}


def concatenate_padded(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack parts along the batch axis, zero-padding other axes to the longest part."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        widest = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
        arrays = [a if a.shape[1:] == widest else
                  np.pad(a, [(0, 0)] + [(0, w - d) for w, d in zip(widest, a.shape[1:], strict=True)])
                  for a in arrays]
        out[name] = np.concatenate(arrays)
    return out


@dataclass
class DynamicBatcher:
    name: str
    infer: InferFn
    policy: BatchPolicy
    collate: Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]] = concatenate_padded
    length_of: Callable[[Tensors], int] | None = None
    """Groups queued requests of similar length into one batch when set (text models)."""
    on_batch: Callable[[BatchRecord], None] | None = None

    _queue: deque[_Chunk] = field(default_factory=deque, init=False)
    _queued_rows: int = field(default=0, init=False)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _full: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _running: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _loop_task: asyncio.Task[None] | None = field(default=None, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)
    _executor: ThreadPoolExecutor | None = field(default=None, init=False)
    _accepting: bool = field(default=False, init=False)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight_batches(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.policy.max_inflight_batches)
        self._executor = ThreadPoolExecutor(self.policy.concurrent_batches, thread_name_prefix=f"infer-{self.name}",
                                            initializer=lower_thread_priority, initargs=(self.policy.worker_niceness,))
        self._loop_task = asyncio.get_running_loop().create_task(self._form_batches(), name=f"batcher-{self.name}")
        self._accepting = True

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, finish every queued and running one, then shut down."""
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for chunk in self._queue:
            chunk.request.fail(ModelNotReady(f"model {self.name!r} is shutting down"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def submit(self, inputs: Tensors) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue a request of N rows; the future resolves to its N rows of outputs.

        Cancelling the future (a deadline, a client that went away) drops the request's
        rows that have not run yet.
        """
        if not self._accepting:
            raise ModelNotReady(f"model {self.name!r} is not accepting requests")
        rows = len(next(iter(inputs.values())))
        if rows > self.policy.max_queue_size:  # could never fit: retrying would not help
            raise PayloadTooLarge(f"the request has {rows} items; model {self.name!r} queues at most "
                                  f"{self.policy.max_queue_size}")
        if self._queued_rows + rows > self.policy.max_queue_size:
            raise QueueFull(
                f"model {self.name!r} has {self._queued_rows} items queued (limit "
                f"{self.policy.max_queue_size}); retry later",
                self.policy.retry_after_s,
            )
        length = self.length_of(inputs) if self.length_of else 0
        request = _Request(inputs, rows, length, asyncio.get_running_loop())
        self._queue.append(_Chunk(request, 0, rows))
        self._queued_rows += rows
        self._arrived.set()
        if self._queued_rows >= self.policy.max_batch_size:
            self._full.set()
        return request.future

    async def _form_batches(self) -> None:
        assert self._slots is not None
        while True:
            await self._arrived.wait()
            self._drop_cancelled_head()
            if not self._queue:
                self._arrived.clear()
                continue
            await self._slots.acquire()
            try:
                await self._wait_until_full_or_due()
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_until_full_or_due(self) -> None:
        self._drop_cancelled_head()
        if not self._queue or self._queued_rows >= self.policy.max_batch_size:
            return
        due = self._queue[0].request.enqueued_at + self.policy.max_queue_delay_s
        remaining = due - time.monotonic()
        if remaining <= 0:
            return
        self._full.clear()
        try:
            await asyncio.wait_for(self._full.wait(), remaining)
        except TimeoutError:
            pass

    def _drop_cancelled_head(self) -> None:
        while self._queue and self._queue[0].request.future.done():
            self._queued_rows -= self._queue.popleft().rows

    def _take_batch(self) -> list[_Chunk]:
        """Up to max_batch_size rows, oldest first; with length grouping, the oldest chunk
        plus the queued chunks closest to its length."""
        self._drop_cancelled_head()
        if not self._queue:
            return []
        candidates: Sequence[int]
        if self.length_of is None or len(self._queue) == 1:
            candidates = range(len(self._queue))
        else:
            window = min(len(self._queue), self.policy.grouping_window + 1)
            target = self._queue[0].request.length
            rest = sorted(range(1, window), key=lambda i: abs(self._queue[i].request.length - target))
            candidates = [0, *rest]
        batch, taken, capacity = [], set(), self.policy.max_batch_size
        for i in candidates:
            if capacity == 0:
                break
            chunk = self._queue[i]
            if chunk.request.future.done():
                taken.add(i)
                self._queued_rows -= chunk.rows
                continue
            if chunk.rows > capacity:  # split: the rest stays queued in place
                batch.append(_Chunk(chunk.request, chunk.start, chunk.start + capacity))
                chunk.start += capacity
                self._queued_rows -= capacity
                capacity = 0
                break
            batch.append(chunk)
            taken.add(i)
            self._queued_rows -= chunk.rows
            capacity -= chunk.rows
        self._remove(taken)
        return batch

    def _remove(self, taken: set[int]) -> None:
        if taken == set(range(len(taken))):  # a prefix: the common FIFO case
            for _ in taken:
                self._queue.popleft()
        else:
            self._queue = deque(c for i, c in enumerate(self._queue) if i not in taken)
        if not self._queue:
            self._arrived.clear()

    async def _execute(self, batch: list[_Chunk]) -> None:
        assert self._slots is not None
        started = time.monotonic()
        waits = [started - c.request.enqueued_at for c in batch]
        rows = sum(c.rows for c in batch)
        ok = False
        collated = computed = started
        try:
            inputs = self.collate([c.tensors() for c in batch])
            collated = time.monotonic()
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, inputs)
            computed = time.monotonic()
            for name, value in outputs.items():
                if len(value) != rows:
                    raise InferenceFailed(f"model {self.name!r} returned {len(value)} rows of "
                                          f"{name!r} for a batch of {rows}")
        except Exception as error:
            logger.exception("batch of %d rows failed for model %s", rows, self.name)
            failure = error if isinstance(error, InferenceFailed) else InferenceFailed(
                f"model {self.name!r} failed on a batch: {type(error).__name__}: {error}")
            for chunk in batch:
                chunk.request.fail(failure)
        else:
            ok = True
            offset = 0
            for chunk in batch:
                chunk.request.deliver(chunk.start, {k: v[offset : offset + chunk.rows] for k, v in outputs.items()})
                offset += chunk.rows
        finally:
            self._slots.release()
            if self.on_batch:
                done = time.monotonic()
                computed = computed if ok else done
                self.on_batch(BatchRecord(rows, waits, computed - collated, ok, collated - started, done - computed))
