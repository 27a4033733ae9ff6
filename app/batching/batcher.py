"""Dynamic batching for one model: the queue (app/batching/queue.py) feeding the runner
(app/batching/runner.py).

Requests carry N rows (instances) of named numpy arrays. When the model is idle, what is
queued runs at once; while a batch runs, the next one fills: the batcher waits at most
`max_queue_delay_s` after its oldest row for it to reach `max_batch_size` rows. Requests
larger than that batch with each other, up to `max_large_batch_size` rows. It splits
requests that do not fit, runs at most
`max_inflight_batches` batches at once, and hands each request back its own rows. It
knows nothing of HTTP or ONNX.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from app.batching.decision import Decision, decide, trigger
from app.batching.policy import BatchPolicy, BatchRecord
from app.batching.queue import BatchQueue
from app.batching.request import Chunk, PendingRequest, Tensors
from app.batching.runner import BatchRunner, InferFn
from app.errors import ModelNotReady

logger = logging.getLogger(__name__)


class DynamicBatcher:
    def __init__(self, name: str, infer: InferFn, policy: BatchPolicy, *,
                 length_of: Callable[[Tensors], int] | None = None,
                 on_batch: Callable[[BatchRecord], None] | None = None,
                 on_batch_start: Callable[[int], None] | None = None,
                 on_restart: Callable[[BaseException], None] | None = None,
                 on_hang_up: Callable[[PendingRequest], None] | None = None, exact_shapes: bool = False) -> None:
        """`length_of`, when given, is a request's padded sequence length: queued requests
        of similar length are batched together (text models). `exact_shapes`: requests are
        batched only with others of the same shapes, never padded. `on_restart` hears of
        each time the batch-forming task died and was restarted."""
        self.name = name
        self.policy = policy
        self.length_of = length_of
        self._infer = infer
        self._on_batch = on_batch
        self._on_batch_start = on_batch_start
        self._on_restart = on_restart
        self._queue = BatchQueue(name, policy, group_by_length=length_of is not None, on_hang_up=on_hang_up,
                                 exact_shapes=exact_shapes)
        self._runner: BatchRunner | None = None
        self._forming: asyncio.Task[None] | None = None
        self._accepting = False
        self._restarts = 0  # in a row: reset once a batch is formed again
        self._arriving = 0  # requests in run_or_queue's turn of the loop
        self._on_the_way = 0  # as the last request to arrive was told (run_or_queue)

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    @property
    def queued_requests(self) -> int:
        return self._queue.requests

    @property
    def inflight_batches(self) -> int:
        return self._runner.inflight if self._runner else 0

    def start(self) -> None:
        # An idle model ends the wait for a fuller batch: waiting pays only while one runs.
        on_idle = self._queue.wake if self.policy.idle_dispatch else None
        self._runner = BatchRunner(self.name, self._infer, self.policy, self._on_batch, self._on_batch_start,
                                   on_idle)
        self._start_forming()
        self._accepting = True

    def _start_forming(self) -> None:
        self._forming = asyncio.get_running_loop().create_task(self._form_batches(), name=f"batcher-{self.name}")
        self._forming.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """The batch former never ends by itself: if it died, log it and start a new one,
        so queued requests are still served."""
        if task.cancelled() or task is not self._forming:
            return
        error = task.exception()
        if error is None:
            return
        self._restarts += 1
        # Backing off: a fault that recurs at once must not become a busy loop of restarts.
        delay = min(1.0, 0.01 * 2 ** (self._restarts - 1))
        logger.error("model %s: the batch-forming task died (%s: %s); restarting it in %g s", self.name,
                     type(error).__name__, error, delay, exc_info=error)
        if self._on_restart:
            self._on_restart(error)
        if self._runner is not None:
            asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        if self._accepting:  # not if the batcher stopped meanwhile
            self._start_forming()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, finish every queued and running one (within `timeout_s`;
        what is still queued then fails with 503), then shut down."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._drained(), timeout_s)
        except TimeoutError:
            logger.warning("model %s: %d rows still queued after %g s of shutdown", self.name,
                           self._queue.rows, timeout_s)
        forming, self._forming = self._forming, None  # no restart from here on
        if forming is not None:
            forming.cancel()
            await asyncio.gather(forming, return_exceptions=True)
        self._queue.fail_all(ModelNotReady(f"model {self.name!r} is shutting down"))
        if self._runner is not None:
            self._runner.shutdown()

    async def run_or_queue(self, inputs: Tensors, client_gone: Callable[[], bool] | None = None,
                           on_the_way: int = 0, level: int = 0) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue a request of N rows, or run it at once where `decide` says inline; the
        future resolves to its N rows of outputs.

        Before running inline it lets the requests that have already arrived catch up (one
        turn of the loop): under load they are waiting beside it, so it is queued and
        batched with them; alone, it is answered without waiting for anyone. `on_the_way`:
        other requests for this model that the caller knows of and the queue does not yet
        (being read or decoded). While there are any, no batch runs inline, here or when
        the queue's next batch is launched: it would hold the event loop that reads them.
        Cancelling the future (a deadline) drops the request's rows that have not run yet;
        so does `client_gone()` turning true (checked when batches are formed). `level`: the
        queue level the request's priority gives it (`level_of`, which refuses one the model lacks).
        """
        if not self._accepting:
            raise ModelNotReady(f"model {self.name!r} is not accepting requests")
        rows = len(next(iter(inputs.values())))
        self._on_the_way = on_the_way
        if self._decide(rows) is Decision.INLINE:
            self._arriving += 1
            try:
                await asyncio.sleep(0)
            finally:
                self._arriving -= 1
            if not self._accepting:
                raise ModelNotReady(f"model {self.name!r} is not accepting requests")
            if self._decide(rows, self._arriving) is Decision.INLINE:
                assert self._runner is not None  # set while accepting
                request = self._pending(inputs, client_gone, level)
                self._runner.run_inline([Chunk(request, 0, rows)])
                return request.future
        request = self._pending(inputs, client_gone, level)
        self._queue.put(request)
        return request.future

    def level_of(self, priority: int) -> int:
        """The queue level of a request asking for `priority` (BatchQueue.level_of): 400 for one
        the model does not have."""
        return self._queue.level_of(priority)

    def _pending(self, inputs: Tensors, client_gone: Callable[[], bool] | None, level: int) -> PendingRequest:
        """The request as queued, made only now: its wait for company (max_queue_delay_s)
        counts from here, not from before the turn of the loop it may have taken."""
        length = self.length_of(inputs) if self.length_of else 0
        return PendingRequest(inputs, length, asyncio.get_running_loop(), client_gone, level)

    def _decide(self, rows: int, arriving: int = 0) -> Decision:
        """`decide` for the rows at hand, with what runs and what waits now."""
        running = self._runner.inflight if self._runner is not None else 0
        return decide(self.policy, rows, running, self._queue.rows + arriving + self._on_the_way)

    async def _drained(self) -> None:
        assert self._runner is not None
        await self._queue.wait_empty()
        await self._runner.wait_idle()

    async def _form_batches(self) -> None:
        runner = self._runner
        assert runner is not None
        while True:
            await self._queue.wait_for_request()
            # A free slot first: while every slot is busy the queue keeps filling, and
            # the batch taken once one frees is as full as the wait allowed.
            await runner.acquire_slot()
            try:
                wait = decide(self.policy, self._queue.rows, runner.inflight, 0) is Decision.WAIT
                batch = await self._queue.wait_for_batch(wait=wait)
            except BaseException:
                runner.release_slot()
                raise
            if not batch:
                runner.release_slot()
                continue
            self._restarts = 0
            rows = sum(c.rows for c in batch)
            # Asked again: the model may have gone idle while the batch filled.
            decision = self._decide(rows)
            runner.launch(batch, decision, trigger(self.policy, rows, decision))
