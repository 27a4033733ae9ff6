"""A queued request and the chunks of its rows that batches take."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from app.errors import ClientGone

Tensors = Mapping[str, np.ndarray]


@dataclass(slots=True)
class BatchMoments:
    """One batch as a trace shows it: its id, size, why it ran, and when (time.monotonic())
    it started, had its inputs gathered and had its outputs."""

    batch_id: int
    rows: int
    requests: int
    trigger: str
    started: float
    collated: float
    computed: float


@dataclass(slots=True)
class RequestTiming:
    """Where one request's time went and which batch it rode in, for its access-log line and
    its trace: set as `request_timing` by the transport (only when something will read it),
    filled by the served model (its name and version, when it was queued and answered) and
    by the runner as the request's batch ends. A request split over several batches keeps
    the last one's id and size, and its waits and compute times added up.

    The moments are time.monotonic(); `arrived_ns` is the arrival in epoch nanoseconds,
    which a trace's spans are dated in."""

    model: str = ""
    version: str = ""
    batch_id: int = 0
    batch_rows: int = 0
    batches: int = 0
    trigger: str = ""  # why its batch ran when it did: idle, full or due
    priority: int = 0  # the level its model queued it at (0: the model has no priority levels)
    sequence_id: int | str | None = None  # a stateful model's request: its sequence (app/sequences.py)
    queue_s: float = 0.0
    compute_s: float = 0.0
    bytes_in: int = 0  # the body's and the answer's bytes, counted by the transport
    bytes_out: int = 0
    traced: bool = False  # whether a trace reads the moments below (the batches' own included)
    arrived: float = 0.0
    arrived_ns: int = 0
    body_done: float = 0.0
    queued: float = 0.0
    answered: float = 0.0
    response_started: float = 0.0
    batch_spans: list[BatchMoments] = field(default_factory=list)  # (traced only) each batch it rode in
    trace_id: str = ""

    def rode(self, batch: BatchMoments, waited_s: float) -> None:
        self.batch_id, self.batch_rows, self.trigger = batch.batch_id, batch.rows, batch.trigger
        self.batches += 1
        self.queue_s += waited_s
        self.compute_s += batch.computed - batch.collated
        if self.traced:
            self.batch_spans.append(batch)


request_timing: ContextVar[RequestTiming | None] = ContextVar("request_timing", default=None)
"""The timing of the request this task serves; None (the default): nobody reads it."""


class PendingRequest:
    """N rows of named arrays waiting for their outputs, which may come back in several
    batches (a request larger than a batch is split)."""

    __slots__ = ("client_gone", "enqueued_at", "future", "hung_up", "inputs", "length", "missing", "parts",
                 "priority", "row_bytes", "rows", "timing")

    def __init__(self, inputs: Tensors, length: int, loop: asyncio.AbstractEventLoop,
                 client_gone: Callable[[], bool] | None = None, priority: int = 0) -> None:
        self.future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self.inputs = inputs
        self.rows = len(next(iter(inputs.values())))
        self.row_bytes = sum(a.nbytes for a in inputs.values()) / self.rows
        self.client_gone = client_gone  # whether the client has hung up (None: cannot tell)
        self.hung_up = False
        self.parts: list[tuple[int, dict[str, np.ndarray]]] = []
        self.missing = self.rows
        self.enqueued_at = time.monotonic()
        self.length = length  # the padded sequence length, for length grouping (0: none)
        self.priority = priority  # its queue level, 1 the highest (0: the model has no levels)
        self.timing = request_timing.get()  # the transport's, where it logs the request
        if priority and self.timing is not None:
            self.timing.priority = priority

    @property
    def bytes(self) -> float:
        return self.rows * self.row_bytes

    def abandoned(self) -> bool:
        """Nothing to compute for: answered already (a deadline, a failure in another batch)
        or its client hung up, in which case it is failed now and marked `hung_up`. A future
        cancelled is a caller cancelled: its client went away (a gRPC call's cancellation
        cancels the call's task, and with it the future it awaits)."""
        if self.future.cancelled():
            self.hung_up = True
            return True
        if self.future.done():
            return True
        if self.client_gone is not None and self.client_gone():
            self.hung_up = True
            self.future.set_exception(ClientGone("the client disconnected before its request ran"))
            return True
        return False

    def deliver(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        """Rows [start, start + len(outputs)) are done; resolves once every row is."""
        if self.future.done():
            return
        self.parts.append((start, outputs))
        self.missing -= len(next(iter(outputs.values())))
        if self.missing:
            return
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
class Chunk:
    """Rows [start, stop) of one request."""

    request: PendingRequest
    start: int
    stop: int
    delayed: bool = False  # moved behind its level's requests that are not late (a DELAY timeout)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def tensors(self) -> dict[str, np.ndarray]:
        if self.start == 0 and self.stop == self.request.rows:
            return dict(self.request.inputs)
        return {k: v[self.start : self.stop] for k, v in self.request.inputs.items()}

    def split(self, rows: int) -> Chunk:
        """The first `rows` rows as a chunk of their own; this chunk keeps the rest."""
        head = Chunk(self.request, self.start, self.start + rows)
        self.start += rows
        return head
