"""One loaded model version, as requests use it: its session, batcher, codec, statistics
and health, and the leases that keep it alive while requests hold it."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from app.batching import BatchPolicy, DynamicBatcher
from app.batching.request import request_timing
from app.codecs import Codec
from app.deadlines import Deadlines
from app.errors import DeadlineExceeded
from app.manifest import Manifest, TensorSpec
from app.observability.stats import ModelStats
from app.reshaping import Reshaper
from app.response_cache import CachePart, Key
from app.runtime import CUDA, OrtModel
from app.sequences import SequenceBook, SequenceFlags, SequenceNotActive, StepTerms
from app.supervision import BatchHealth
from app.warmup_samples import rows_of


@dataclass(eq=False)
class ServedModel:
    manifest: Manifest
    variant: str
    session: OrtModel | None
    """Its ONNX Runtime session; None for an ensemble (app/ensemble.py), which runs others'."""
    batcher: DynamicBatcher | None
    """What queues and batches its requests; None for an ensemble, whose steps' models do."""
    codec: Codec
    health: BatchHealth
    stats: ModelStats = field(default_factory=ModelStats)
    fingerprint: str = ""
    """What its manifest was when it was loaded (app/repository.py reloads on a change)."""
    verified: bool = True
    """Its files were checked against digests (a manifest's); False for a drop-in model.onnx."""
    told_by: str = ""
    """The configuration files (or load request) that said what the graph did not."""
    ignored: dict[str, str] = field(default_factory=dict)
    """Fields of a Triton configuration this server does not use, with why."""
    reshaper: Reshaper | None = None
    """Clients' shapes to the graph's, where the manifest tells them apart (app/reshaping.py)."""
    cache: CachePart | None = None
    """Answers kept for repeated inputs, where the manifest asks for it (app/response_cache.py)."""
    warmup_samples: list[tuple[dict[str, np.ndarray], int]] = field(default_factory=list)
    """Triton's model_warmup: requests (as the graph takes them) and how often each is run;
    empty: warmed up on generated inputs (app/warmup_samples.py)."""
    sequences: SequenceBook | None = None
    """A stateful model's active sequences (app/sequences.py); None: its requests stand alone."""
    leases: int = 0
    """Requests that hold this model: between looking it up and their answer."""

    def __post_init__(self) -> None:
        # A function of the name, not a bound method: no reference cycle through the model,
        # so an unloaded model is freed by reference counting even where the collector
        # does not look (objects frozen at start-up, app/tuning.py).
        self.deadlines = Deadlines(functools.partial(_expire, self.name))
        self._unleased = asyncio.Event()
        self._unleased.set()

    @property
    def name(self) -> str:
        return self.manifest.name

    @functools.cached_property
    def version(self) -> str:  # cached: read for every response
        return str(self.manifest.version)

    @property
    def ready(self) -> bool:
        return self.health.healthy

    def check(self) -> None:
        """Raise ModelNotReady, with why, while it should not be sent requests."""
        self.health.check()

    @property
    def policy(self) -> BatchPolicy:
        """How its requests are batched (its max_batch_size, queue delay, concurrent batches)."""
        assert self.batcher is not None
        return self.batcher.policy

    @property
    def device(self) -> str:
        """Where its batches run: "GPU" or "CPU" (Triton's instance kinds)."""
        assert self.session is not None
        return "GPU" if self.session.providers[0] == CUDA else "CPU"

    @functools.cached_property
    def outputs_fixed(self) -> bool:
        """Whether every output's shape is known but for the batch axis, and of fixed-size
        elements: then an answer's size before computing it is its size after."""
        batches = self.manifest.batches
        return all(-1 not in spec.item_shape(batches) and spec.datatype != "BYTES" for spec in self.manifest.outputs)

    def lease(self) -> Lease:
        """`async with model.lease() as model`: held for one request, until it is answered.
        A model being replaced is unloaded only once no request holds it, so none that
        found it fails."""
        self.leases += 1
        self._unleased.clear()
        return Lease(self)

    def _release(self) -> None:
        self.leases -= 1
        if not self.leases:
            self._unleased.set()

    async def retire(self, grace_s: float) -> None:
        """Once no request holds it, finish what is queued and running, then stop."""
        try:
            await asyncio.wait_for(self._unleased.wait(), grace_s)
        except TimeoutError:
            pass
        if self.batcher is not None:
            await self.batcher.stop(grace_s)
        self.deadlines.close()
        if self.cache is not None:
            self.cache.clear()

    async def infer(self, inputs: dict[str, np.ndarray], due: float, timeout_s: float,
                    client_gone: Callable[[], bool] | None = None, others_on_the_way: bool = False,
                    in_flight_beside: int = 0, priority: int = 0,
                    sequence: SequenceFlags | None = None) -> dict[str, np.ndarray]:
        """Queue and await one request's (already validated) rows; at `due` (time.monotonic(),
        counted from the request's arrival) the request gets 504. `others_on_the_way`: the
        other requests holding this model count as on their way to its queue, so that no
        batch runs inline, on the event loop, while there are any (DynamicBatcher.run_or_queue).
        `in_flight_beside`: requests the transport knows its client has in flight beside this
        one (a gRPC stream's earlier messages not answered yet), counted the same way.
        `priority`: the request's (Triton's `priority` parameter; 0: the model's default level).
        `sequence`: what a stateful model's request says of its sequence (its controls and
        state are filled, app/sequences.py); other models' requests need none."""
        if self.sequences is not None:
            terms = StepTerms(priority, due, timeout_s)
            return await self.sequences.run(inputs, sequence, self._queue_as(terms, client_gone, others_on_the_way,
                                                                           in_flight_beside), terms)
        return await self._queued(inputs, due, timeout_s, client_gone, others_on_the_way, in_flight_beside, priority)

    def _queue_as(self, terms: StepTerms, client_gone: Callable[[], bool] | None = None,
                  others_on_the_way: bool = False, in_flight_beside: int = 0
                  ) -> Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]:
        """A stateful model's step to its batcher, once its sequence fills its inputs."""
        return functools.partial(self._queued, due=terms.due, timeout_s=terms.timeout_s, client_gone=client_gone,
                                 others_on_the_way=others_on_the_way, in_flight_beside=in_flight_beside,
                                 priority=terms.priority)

    async def step_here(self, inputs: dict[str, np.ndarray], flags: SequenceFlags, terms: StepTerms
                        ) -> dict[str, np.ndarray] | None:
        """A step another worker took, of a sequence this one may hold (app/sequence_peers.py):
        run as the step of a client's request here would be; None where its sequence is not held here."""
        assert self.sequences is not None
        async with self.lease():
            try:
                return await self.sequences.run(inputs, flags, self._queue_as(terms))
            except SequenceNotActive:
                return None

    async def _queued(self, inputs: dict[str, np.ndarray], due: float, timeout_s: float,
                      client_gone: Callable[[], bool] | None, others_on_the_way: bool, in_flight_beside: int,
                      priority: int) -> dict[str, np.ndarray]:
        started = time.monotonic()
        if started >= due:
            raise DeadlineExceeded(f"model {self.name!r}: the request's {timeout_s:g} s were spent before it "
                                   "could be queued")
        timing = request_timing.get()
        if timing is not None:  # the access log's and the trace's: which model version answered, and when
            timing.model, timing.version, timing.queued = self.name, self.version, started
        batcher = self.batcher
        assert batcher is not None  # an ensemble answers by its own infer
        level = batcher.level_of(priority)  # a priority the model lacks is refused, answer kept or not
        key = None
        if self.cache is not None:
            key, kept = self._look_up(inputs, started)
            if kept is not None:
                return kept
        if self.reshaper is not None:  # checked as clients send them, queued as the graph takes them
            inputs = self.reshaper.to_graph(inputs)
        on_the_way = max(in_flight_beside, self.leases - 1 if others_on_the_way else 0)
        future = await batcher.run_or_queue(inputs, client_gone, on_the_way, level)
        # Not asyncio.wait_for: no extra task per request on the hot path.
        self.deadlines.watch(future, due, timeout_s)
        ok = False
        try:
            outputs = await future
            ok = True
            if timing is not None:
                timing.answered = time.monotonic()
            if key is not None:
                self._keep(key, outputs)
            return outputs
        finally:
            self.stats.record_request(time.monotonic() - started, ok)

    def _look_up(self, inputs: dict[str, np.ndarray], started: float
                 ) -> tuple[Key | None, dict[str, np.ndarray] | None]:
        """The cache's key for these inputs (None: not cacheable) and its answer where it has one,
        counted in the statistics (a hit as the request's success, answered as it was looked up)."""
        assert self.cache is not None
        key = self.cache.key(inputs)
        kept = self.cache.get(key) if key is not None else None
        looked = time.monotonic()
        self.stats.record_cache_lookup(kept is not None, looked - started)
        if kept is not None:
            timing = request_timing.get()
            if timing is not None:
                timing.answered = looked
            self.stats.record_request(looked - started, True)
        return key, kept

    def _keep(self, key: Key, outputs: dict[str, np.ndarray]) -> None:
        """A miss's answer into the cache, the time it takes counted with the miss's (as Triton's)."""
        assert self.cache is not None
        began = time.monotonic()
        self.cache.put(key, outputs)
        self.stats.record_cache_insert(time.monotonic() - began)

    def warm_up(self) -> None:
        """Run once per power-of-two batch size up to the largest batch the batcher forms,
        so the first real requests (and on CUDA every batch shape bucket) do not pay for
        first-run set-up; and measure from which size the wide session pays, where it is
        to be measured (app/runtime.py `OrtModel.calibrate`). Where the configuration gives
        warm-up samples, each is run as often as it says, and the batches are made of the
        first one's rows, in turn, instead of generated ones."""
        session = self.session
        assert session is not None  # an ensemble warms nothing up (app/ensemble.py)
        for inputs, count in self.warmup_samples:
            for _ in range(count):
                session.run(inputs)
        if not self.manifest.batches:  # one request's tensors as declared, no batch axis
            inputs = (self.warmup_samples[0][0] if self.warmup_samples else
                      {spec.name: _dummy(spec, 0, batches=False) for spec in self.manifest.graph_inputs()})
            session.run(inputs)
            session.known_good = inputs
            return
        policy = self.policy
        largest = min(max(policy.max_batch_size, policy.max_large_batch_size), self._most_rows_queued())
        sizes, size = [], 1
        while size < largest:
            sizes.append(size)
            size *= 2
        sizes.append(largest)
        for n in sizes:
            session.run(self._dummy_batch(n))
        session.known_good = self._dummy_batch(1)
        session.calibrate(self._dummy_batch, sizes)

    def _most_rows_queued(self) -> int:
        """The most rows a batch can hold: what the queue takes (app/batching/queue.py), in
        items and in bytes. A configuration's max_batch_size may be far beyond it (a Triton
        config's 100000, say): warming up at that size would take the memory of a batch that
        can never form."""
        policy = self.policy
        row_bytes = max(1, sum(a.nbytes for a in self._dummy_batch(1).values()))
        return max(1, min(policy.max_queue_size, policy.max_queue_bytes // row_bytes))

    def _dummy_batch(self, rows: int) -> dict[str, np.ndarray]:
        if self.warmup_samples:  # the first sample's rows, in turn
            return rows_of(self.warmup_samples[0][0], rows)
        return {spec.name: _dummy(spec, rows) for spec in self.manifest.graph_inputs()}


class Lease:
    """A request's hold on a model (ServedModel.lease), let go when the block ends however
    it ends. A class, not a generator context manager: it is on every request's path."""

    __slots__ = ("model",)

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    async def __aenter__(self) -> ServedModel:
        return self.model

    async def __aexit__(self, *_: object) -> None:
        self.model._release()


def _expire(name: str, future: asyncio.Future[dict[str, np.ndarray]], timeout_s: float) -> None:
    future.set_exception(DeadlineExceeded(f"model {name!r} did not answer within {timeout_s:g} s"))


def _dummy(spec: TensorSpec, rows: int, batches: bool = True) -> np.ndarray:
    dims = [8 if d == -1 else d for d in spec.graph_item_shape(batches)]  # run as the graph takes it
    shape = [rows, *dims] if batches else dims
    if spec.datatype == "BYTES":
        return np.full(shape, "1", dtype=object)
    fill = 0 if spec.numpy_dtype.startswith("float") else 1  # ids and lengths of 1 are valid
    return np.full(shape, fill, dtype=spec.numpy_dtype)
