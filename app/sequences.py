"""A stateful model's sequences (Triton's sequence batching, with its implicit state): which
sequences are active in this worker, each one's state, and the inputs the server fills for
each request.

A request names its sequence (`sequence_id`) and says whether it starts or ends it. The
requests of one sequence run one at a time, in the order they came: each waits for the one
before it to be answered, then goes to the model's batcher with the control inputs filled
(start, end, ready, the correlation ID) and the state the one before it left (zeros for the
first). Requests of different sequences meet in the batcher and batch together, as Triton's
oldest strategy batches them; there are no slots to wait for. The states a request's run
gives are kept for the next, and are not answered (unless the model lists them as outputs).

A sequence lives in the worker that served its start. With several workers, a step that reaches
another worker (a client that opens a connection per request, a proxy that pools its own) is
run by the worker that holds its sequence, asked through `Peers` (app/sequence_peers.py), and a
start makes the other workers forget a sequence they hold under its ID: one ID, one sequence,
in the whole server. Sequences are bounded (`max_sequences`, a 503 past it), so are the bytes
of their states (a state that grows past them ends its sequence), and they are ended when idle
past `idle_ms`, as Triton ends them, so a client that never sends its end costs nothing for
long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.batching.request import request_timing
from app.errors import InvalidInput, QueueFull
from app.manifest import DATATYPES, SequenceControl, Sequences

SequenceId = int | str


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """What a request says of its sequence (Triton's sequence_id, sequence_start, sequence_end)."""

    id: SequenceId
    start: bool = False
    end: bool = False


class SequenceNotActive(InvalidInput):
    """A step of a sequence this worker does not hold (never started, ended, or idle past its time)."""


@dataclass(frozen=True, slots=True)
class StepTerms:
    """What a step sent to another worker keeps of its request: its priority and its deadline
    (time.monotonic() here, and the timeout it was counted from)."""

    priority: int
    due: float
    timeout_s: float


class Peers(Protocol):
    """The server's other workers, for the sequences this one does not hold (app/sequence_peers.py)."""

    async def step(self, model: str, version: str, inputs: dict[str, np.ndarray], flags: SequenceFlags,
                   terms: StepTerms) -> dict[str, np.ndarray] | None:
        """The step run by the worker that holds its sequence; None: none does."""
        ...

    async def forget(self, model: str, version: str, sequence_id: SequenceId, terms: StepTerms) -> None:
        """Every other worker drops its sequence under this ID, if it holds one."""
        ...


@dataclass(eq=False)
class _Sequence:
    state: dict[str, np.ndarray]
    """The state inputs its next request runs with."""
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by the request that runs; the next ones wait for it in their order (asyncio's
    locks wake their waiters first come, first served)."""
    waiting: int = 0
    """Its requests taken and not yet answered: while any, it is not idle."""
    last: float = field(default_factory=time.monotonic)
    """When its last request was answered (or it started)."""
    nbytes: int = 0
    """Its state's bytes."""


class SequenceBook:
    """One model version's active sequences in this worker."""

    def __init__(self, model: str, facts: Sequences, max_state_bytes: int,
                 answered: frozenset[str] = frozenset(), version: str = "1") -> None:
        """`max_state_bytes`: what the states of all its active sequences may take at most (a
        state may grow: a history, a cache). `answered`: the model's outputs; a state output
        among them is answered as well as kept (Triton answers one the configuration lists, for
        debugging)."""
        self.model = model
        self.version = version
        self.peers: Peers | None = None
        """The other workers, where there are any (set as the version is loaded)."""
        self.facts = facts
        self.max_state_bytes = max_state_bytes
        self._idle_s = facts.idle_ms / 1000
        self._live: dict[SequenceId, _Sequence] = {}
        self._bytes = 0  # the live sequences' states'
        self._kept = {s.output: s.input for s in facts.states}
        self._answered = answered

    @property
    def active(self) -> int:
        """Sequences started and not ended (idle ones are counted until a request finds them so)."""
        return len(self._live)

    async def run(self, inputs: dict[str, np.ndarray], flags: SequenceFlags | None,
                  infer: Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]],
                  terms: StepTerms | None = None) -> dict[str, np.ndarray]:
        """One request of a sequence: after the sequence's earlier ones, through `infer` (the
        model's batcher) with its controls and state filled; its state outputs kept, not answered.
        `terms`: a client's request, which the other workers may run (a sequence one of them
        holds) or must hear of (a start); None: a step another worker sent here, run only if
        its sequence is held here (SequenceNotActive otherwise)."""
        if flags is None:
            raise InvalidInput(f"model {self.model!r} serves sequences: each request gives its sequence_id "
                               "parameter (a number or a string; sequence_start true on the first request, "
                               "sequence_end true on the last)")
        rows = len(next(iter(inputs.values())))
        if rows != 1:
            raise InvalidInput(f"model {self.model!r} serves sequences: a request is one step of one sequence, "
                               f"one row; got {rows}")
        controls = self._controls(flags)  # a correlation ID the model cannot take is refused before it starts
        timing = request_timing.get()
        if timing is not None:  # the access log's and the trace's
            timing.sequence_id = flags.id
        now = time.monotonic()
        peers = self.peers if terms is not None else None
        forgetting = None
        if flags.start:
            sequence = self._start(flags, now)
            if peers is not None and terms is not None:  # heard by the others while it runs, before it is answered
                forgetting = asyncio.ensure_future(peers.forget(self.model, self.version, flags.id, terms))
        else:
            held = self._held(flags.id, now)
            if held is None:
                if peers is not None and terms is not None:
                    if timing is not None:
                        timing.model, timing.version, timing.queued = self.model, self.version, now
                    outputs = await peers.step(self.model, self.version, inputs, flags, terms)
                    if outputs is not None:
                        if timing is not None:
                            timing.answered = time.monotonic()
                        return outputs
                raise self._not_active(flags.id, asked_others=peers is not None)
            sequence = held
        if flags.end:  # ended as its end is taken: a step sent after it is refused, as Triton refuses it
            self._drop(flags.id)
        sequence.waiting += 1
        try:
            async with sequence.turn:
                given = inputs | sequence.state | controls
                outputs = await infer(given)
                # A copy: the rows handed back are views of the whole batch's output
                self._keep(flags.id, sequence, {
                    state: (outputs[output] if output in self._answered else outputs.pop(output)).copy()
                    for output, state in self._kept.items()})
                return outputs
        finally:
            sequence.waiting -= 1
            sequence.last = time.monotonic()
            if forgetting is not None:  # never raises (a worker that cannot be reached holds nothing)
                await forgetting

    def forget(self, sequence_id: SequenceId) -> bool:
        """Drop the sequence under this ID, if this worker holds one (another worker started one
        under it); its steps already taken finish on it. Whether it held one."""
        if sequence_id not in self._live:
            return False
        self._drop(sequence_id)
        return True

    def _keep(self, sequence_id: SequenceId, sequence: _Sequence, state: dict[str, np.ndarray]) -> None:
        """A step's state for the sequence's next, within max_state_bytes for them all: a state
        that would pass it ends its sequence, and its step is refused saying so."""
        nbytes = sum(array.nbytes for array in state.values())
        if self._live.get(sequence_id) is sequence:  # (one replaced by a new start is no longer counted)
            grown = nbytes - sequence.nbytes
            if self._bytes + grown > self.max_state_bytes:
                self._drop(sequence_id)
                raise QueueFull(f"model {self.model!r}: sequence {sequence_id!r}'s state grew to {nbytes:,} bytes, "
                                f"which with its other active sequences' would pass the {self.max_state_bytes:,} "
                                "bytes the server keeps for them in this worker (max_queue_bytes); the sequence is "
                                "ended: start it again")
            self._bytes += grown
        sequence.state, sequence.nbytes = state, nbytes

    def _drop(self, sequence_id: SequenceId) -> None:
        self._bytes -= self._live.pop(sequence_id).nbytes

    def _start(self, flags: SequenceFlags, now: float) -> _Sequence:
        """A new sequence under this ID: one still active under it is replaced (its requests
        already taken finish on it), as a client restarting a stream expects."""
        if flags.id not in self._live and len(self._live) >= self.facts.max_sequences:
            self._end_idle(now)
            if len(self._live) >= self.facts.max_sequences:
                raise QueueFull(f"model {self.model!r} has {len(self._live)} sequences active in this worker, its "
                                f"most (max_candidate_sequences); one must end (sequence_end) or be idle "
                                f"{self.facts.idle_ms:g} ms (max_sequence_idle_microseconds) first")
        if flags.id in self._live:
            self._drop(flags.id)
        state = {s.input: s.initial() for s in self.facts.states}
        sequence = self._live[flags.id] = _Sequence(state, nbytes=sum(a.nbytes for a in state.values()))
        self._bytes += sequence.nbytes
        return sequence

    def _held(self, sequence_id: SequenceId, now: float) -> _Sequence | None:
        """The sequence under this ID, if this worker holds it and it is not idle past its time."""
        sequence = self._live.get(sequence_id)
        if sequence is not None and self._idle(sequence, now):
            self._drop(sequence_id)
            return None
        return sequence

    def _not_active(self, sequence_id: SequenceId, asked_others: bool) -> SequenceNotActive:
        where = " (no worker of the server holds it)" if asked_others else ""
        return SequenceNotActive(f"sequence {sequence_id!r} of model {self.model!r} is not active{where}: its first "
                                 f"request sets sequence_start true; a sequence ends with its sequence_end, or idle "
                                 f"for {self.facts.idle_ms:g} ms (max_sequence_idle_microseconds)")

    def _idle(self, sequence: _Sequence, now: float) -> bool:
        return not sequence.waiting and now - sequence.last > self._idle_s

    def _end_idle(self, now: float) -> None:
        for sequence_id in [i for i, s in self._live.items() if self._idle(s, now)]:
            self._drop(sequence_id)

    def _controls(self, flags: SequenceFlags) -> dict[str, np.ndarray]:
        return {control.input: _control_value(control, flags) for control in self.facts.controls}


def first_steps(facts: Sequences, rows: int) -> dict[str, np.ndarray]:
    """What the server fills for `rows` sequences' first requests (their states zeros): the
    inputs a warm-up sample of a stateful model leaves to the server."""
    filled = {c.input: _control_value(c, SequenceFlags(1, start=True)) for c in facts.controls}
    filled |= {s.input: s.initial() for s in facts.states}
    return {name: np.repeat(value, rows, axis=0) for name, value in filled.items()}


def _control_value(control: SequenceControl, flags: SequenceFlags) -> np.ndarray:
    """One request's value of a control input, as a [1, 1] tensor of its type."""
    dtype = DATATYPES[control.datatype]
    if control.kind == "correlation_id":
        if control.datatype == "BYTES":
            return np.array([[str(flags.id)]], dtype=object)
        if isinstance(flags.id, str):
            raise InvalidInput(f"sequence_id {flags.id!r}: this model's correlation ID is a number "
                               f"({control.datatype})")
        info = np.iinfo(dtype)
        if not info.min <= flags.id <= info.max:
            raise InvalidInput(f"sequence_id {flags.id}: this model's correlation ID is {control.datatype}, "
                               f"{info.min} to {info.max}")
        return np.array([[flags.id]], dtype=dtype)
    assert control.false_true is not None  # a flag's values (SequenceControl checks)
    on = {"start": flags.start, "end": flags.end, "ready": True}[control.kind]
    return np.array([[control.false_true[int(on)]]], dtype=dtype)
