"""Running batches: bounded in-flight slots, inference threads, and each request's rows back.

ONNX Runtime releases the GIL, so batches run in a thread pool while the event loop goes
on parsing requests. A failure fails that batch's requests only. Under load the thread waits
1-1.5 ms a batch for the GIL to hand ONNX Runtime's outputs back; a prototype with ONNX
Runtime in a child process instead left the loop as idle and no faster (docs/benchmarks.md,
"Where the model's thread meets the event loop").

A batch for a thread is collated and handed over as it is launched, and its rows come
back in one callback from that thread: no task and no awaited future in between. Under
load each of those costs a turn of the event loop, behind every request it is parsing:
a batch's answers waited 2.2 ms (median) after the model was done, its clients with
them (docs/benchmarks.md, "Batches handed back in one callback").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import numpy as np

from app.batching.collate import concatenate_padded
from app.batching.decision import Decision
from app.batching.policy import BatchPolicy, BatchRecord
from app.batching.request import BatchMoments, Chunk
from app.errors import InferenceFailed, ModelNotReady, ModelRefusedInput
from app.tuning import start_inference_thread

logger = logging.getLogger(__name__)

InferFn = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]
"""(a batch's tensors, the number of requests its rows come from) -> its outputs."""


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
        self._running: set[asyncio.Task[None]] = set()  # inline batches
        self._on_threads = 0  # batches handed to the inference threads, not yet back
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(policy.concurrent_batches, thread_name_prefix=f"infer-{name}",
                                            initializer=start_inference_thread,
                                            initargs=(policy.inference_niceness,))

    @property
    def inflight(self) -> int:
        return len(self._running) + self._on_threads

    async def acquire_slot(self) -> None:
        """Wait until fewer than max_inflight_batches batches are handed over."""
        await self._slots.acquire()

    def release_slot(self) -> None:
        self._slots.release()

    def launch(self, batch: list[Chunk], decision: Decision, trigger: str) -> None:
        """Run a batch in a slot already acquired (on the event loop where `decision` says
        inline, else on an inference thread); the slot is released when it ends. `trigger`
        says why it was formed when it was (idle, full or due), for its record."""
        self._idle.clear()
        if decision is not Decision.INLINE:
            self._hand_over(batch, trigger)
            return
        task = asyncio.get_running_loop().create_task(self._execute(batch, trigger))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _hand_over(self, batch: list[Chunk], trigger: str) -> None:
        """Collate the batch here, on the loop, and give it to an inference thread. On the
        loop, while the thread may still run the batch before: in the thread the copy
        would add to the one inference thread's every batch (4.5% of the throughput of
        32-image requests at c16, docs/benchmarks.md)."""
        loop = asyncio.get_running_loop()
        run = _BatchRun(self, batch, next(self._batch_ids))
        self._on_threads += 1  # counted from here: `_back` takes it off, whatever happens
        try:
            inputs = run.collate()
            work = self._executor.submit(self._compute, loop, run, inputs, trigger)
        except Exception as error:  # collating failed, or the threads were shut down
            self._back(run, trigger, None, error)
            return
        work.add_done_callback(partial(self._if_cancelled, loop, run, trigger))

    def _if_cancelled(self, loop: asyncio.AbstractEventLoop, run: _BatchRun, trigger: str, work: Future[None]) -> None:
        """Shut down before the batch ran (`shutdown` cancels what waits): it fails, its slot comes back."""
        if work.cancelled():
            loop.call_soon_threadsafe(self._back, run, trigger, None,
                                      ModelNotReady(f"model {self.name!r} is shutting down"))

    def _compute(self, loop: asyncio.AbstractEventLoop, run: _BatchRun, inputs: dict[str, np.ndarray],
                 trigger: str) -> None:
        """On an inference thread: the batch's outputs (or its error) back to the loop."""
        try:
            outputs, error = run.compute(self.infer, inputs), None
        except Exception as failed:
            outputs, error = None, failed
        del inputs
        try:
            loop.call_soon_threadsafe(self._back, run, trigger, outputs, error)
        except RuntimeError:
            pass  # the loop has closed: nobody waits for these rows any more

    def _back(self, run: _BatchRun, trigger: str, outputs: dict[str, np.ndarray] | None,
              error: Exception | None) -> None:
        """On the loop: a handed-over batch's rows to its requests, its slot released."""
        try:
            if outputs is not None:
                run.finish(outputs)
            else:
                run.fail(error or InferenceFailed(f"model {self.name!r} gave no outputs"))
        except Exception as failed:  # rows that do not match the batch's
            run.fail(failed)
        finally:
            self._slots.release()
            run.record(trigger)
            self._on_threads -= 1
            self._maybe_idle()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def shutdown(self) -> None:
        """Let the threads go. Without waiting: a batch still running past the drain time
        must not block the event loop; it still answers its requests when it ends."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self._running and not self._on_threads:
            self._idle.set()
            if self.on_idle is not None:
                self.on_idle()

    def run_inline(self, batch: list[Chunk]) -> None:
        """Run a batch right here, on the event loop, without a slot or a task: what
        `decide` says of an idle model's small request as it arrives."""
        self._run_here(batch, "idle")

    async def _execute(self, batch: list[Chunk], trigger: str) -> None:
        """A batch the decision put on the loop, in its own task (the batch former's turn ends first)."""
        try:
            self._run_here(batch, trigger)
        finally:
            self._slots.release()

    def _run_here(self, batch: list[Chunk], trigger: str) -> None:
        run = _BatchRun(self, batch, next(self._batch_ids))
        try:
            run.finish(run.compute(self.infer, run.collate()))
        except Exception as error:
            run.fail(error)
        finally:
            run.record(trigger)


class _BatchRun:
    """One batch through the model: its inputs gathered, each request's rows delivered (or
    the batch's failure), and its record."""

    def __init__(self, runner: BatchRunner, batch: list[Chunk], batch_id: int) -> None:
        self.runner, self.batch, self.batch_id = runner, batch, batch_id
        self.started = self.collated = self.computed = time.monotonic()
        self.waits = [self.started - c.request.enqueued_at for c in batch]
        self.rows = sum(c.rows for c in batch)
        self.ok, self.failure_text, self.refused = False, "", False
        self.partly_answered: int | None = None
        self.alone: list[dict[str, np.ndarray] | ModelRefusedInput] | None = None
        """Each request's own outcome, where the batch was run a request at a time."""
        if runner.on_batch_start:
            runner.on_batch_start(self.batch_id)

    def collate(self) -> dict[str, np.ndarray]:
        inputs = concatenate_padded([c.tensors() for c in self.batch])
        self.collated = time.monotonic()
        return inputs

    def compute(self, infer: InferFn, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's outputs. Where the model refuses a value of one of several requests,
        each is run alone: the one it refuses gets that 400, the others their answers."""
        try:
            return infer(inputs, len(self.batch))
        except ModelRefusedInput:
            if len(self.batch) == 1:
                raise
        alone: list[dict[str, np.ndarray] | ModelRefusedInput] = []
        for chunk in self.batch:
            try:
                alone.append(infer(chunk.tensors(), 1))
            except ModelRefusedInput as refused:
                alone.append(refused)
        self.alone = alone
        return {}

    def finish(self, outputs: dict[str, np.ndarray]) -> None:
        self.computed = time.monotonic()
        if self.alone is not None:
            self._finish_alone(self.alone)
            return
        for name, value in outputs.items():
            if len(value) != self.rows:  # one output row per input row, or the batch failed
                raise InferenceFailed(f"model {self.runner.name!r} returned {len(value)} rows of "
                                      f"{name!r} for a batch of {self.rows}")
        self.ok = True
        offset = 0
        for chunk in self.batch:
            chunk.request.deliver(chunk.start, {k: v[offset : offset + chunk.rows] for k, v in outputs.items()})
            offset += chunk.rows

    def _finish_alone(self, outcomes: list[dict[str, np.ndarray] | ModelRefusedInput]) -> None:
        for chunk, outcome in zip(self.batch, outcomes, strict=True):
            if isinstance(outcome, ModelRefusedInput):
                chunk.request.fail(outcome)
            else:
                chunk.request.deliver(chunk.start, outcome)
        self.ok = all(not isinstance(o, ModelRefusedInput) for o in outcomes)
        self.refused = not self.ok
        if self.refused:
            self.partly_answered = sum(chunk.rows for chunk, outcome in zip(self.batch, outcomes, strict=True)
                                       if not isinstance(outcome, ModelRefusedInput))
        self.failure_text = "" if self.ok else "the model refused a request's input"

    def fail(self, error: Exception) -> None:
        """The batch's requests, and only they, fail with it: a value the model refused is
        the request's mistake (a 400), anything else the model's (a 500)."""
        self.ok = False
        name = self.runner.name
        # No fault of the model: a value it refused (the request's 400), or a batch let go
        # before it ran (BatchRunner.shutdown, a 503). Each request gets the error as it is.
        if isinstance(error, (ModelRefusedInput, ModelNotReady)):
            self.refused, self.failure_text = isinstance(error, ModelRefusedInput), error.message
            if self.refused:  # a client's 400: at debug, not info, where a client could flood the log with them
                logger.debug("model %s refused a request's input: %s", name, error.message)
            for chunk in self.batch:
                chunk.request.fail(error)
            return
        logger.error("batch of %d rows failed for model %s", self.rows, name, exc_info=error)
        failure = error if isinstance(error, InferenceFailed) else InferenceFailed(
            f"model {name!r} failed on a batch: {type(error).__name__}: {error}")
        self.failure_text = failure.message
        for chunk in self.batch:
            chunk.request.fail(failure)

    def record(self, trigger: str) -> None:
        done = time.monotonic()
        computed = self.computed if self.ok else done
        moments = None
        for chunk, waited in zip(self.batch, self.waits, strict=True):
            timing = chunk.request.timing
            if timing is not None:  # before the request's task resumes: its future's callbacks wait their turn
                if moments is None:
                    moments = BatchMoments(self.batch_id, self.rows, len(self.batch), trigger, self.started,
                                           self.collated, computed)
                timing.rode(moments, waited)
        if self.runner.on_batch:
            self.runner.on_batch(BatchRecord(self.rows, self.waits, computed - self.collated, self.ok,
                                             self.collated - self.started, done - computed, self.batch_id,
                                             self.failure_text, trigger, self.refused, self.partly_answered))
