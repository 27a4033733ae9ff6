"""Running batches: bounded in-flight slots, inference threads, and each request's rows back.

ONNX Runtime releases the GIL, so batches run in a thread pool while the event loop goes
on parsing requests. A failure fails that batch's requests only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.batching.collate import concatenate_padded
from app.batching.policy import BatchPolicy, BatchRecord
from app.batching.request import Chunk
from app.errors import InferenceFailed
from app.tuning import lower_thread_priority

logger = logging.getLogger(__name__)

InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class BatchRunner:
    def __init__(self, name: str, infer: InferFn, policy: BatchPolicy,
                 on_batch: Callable[[BatchRecord], None] | None = None,
                 on_batch_start: Callable[[int], None] | None = None,
                 on_idle: Callable[[], None] | None = None) -> None:
        self.name = name
        self.infer = infer
        self.policy = policy
        self.on_batch = on_batch
        self.on_batch_start = on_batch_start
        self.on_idle = on_idle  # called each time the last running batch ends
        self._batch_ids = itertools.count(1)
        self._slots = asyncio.Semaphore(policy.max_inflight_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(policy.concurrent_batches, thread_name_prefix=f"infer-{name}",
                                            initializer=lower_thread_priority,
                                            initargs=(policy.inference_niceness,))

    @property
    def inflight(self) -> int:
        return len(self._running)

    async def acquire_slot(self) -> None:
        """Wait until fewer than max_inflight_batches batches are handed over."""
        await self._slots.acquire()

    def release_slot(self) -> None:
        self._slots.release()

    def launch(self, batch: list[Chunk], trigger: str = "") -> None:
        """Run a batch in a slot already acquired; the slot is released when it ends.
        `trigger` says why it was formed when it was (idle, full or due), for its record."""
        task = asyncio.get_running_loop().create_task(self._execute(batch, trigger))
        self._running.add(task)
        self._idle.clear()
        task.add_done_callback(self._finished)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def shutdown(self) -> None:
        """Let the threads go. Without waiting: a batch still running past the drain time
        must not block the event loop; it still answers its requests when it ends."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._running:
            self._idle.set()
            if self.on_idle is not None:
                self.on_idle()

    async def _execute(self, batch: list[Chunk], trigger: str) -> None:
        started = time.monotonic()
        waits = [started - c.request.enqueued_at for c in batch]
        rows = sum(c.rows for c in batch)
        batch_id = next(self._batch_ids)
        if self.on_batch_start:
            self.on_batch_start(batch_id)
        ok = False
        failure_text = ""
        collated = computed = started
        try:
            inputs = concatenate_padded([c.tensors() for c in batch])
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
            failure_text = failure.message
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
                self.on_batch(BatchRecord(rows, waits, computed - collated, ok, collated - started, done - computed,
                                          batch_id, failure_text, trigger))
