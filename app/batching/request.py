"""A queued request and the chunks of its rows that batches take."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from app.errors import ClientGone

Tensors = Mapping[str, np.ndarray]


class PendingRequest:
    """N rows of named arrays waiting for their outputs, which may come back in several
    batches (a request larger than a batch is split)."""

    __slots__ = ("client_gone", "enqueued_at", "future", "hung_up", "inputs", "length", "missing", "parts",
                 "row_bytes", "rows")

    def __init__(self, inputs: Tensors, length: int, loop: asyncio.AbstractEventLoop,
                 client_gone: Callable[[], bool] | None = None) -> None:
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
