"""What a batcher is told (BatchPolicy) and what it reports for each batch (BatchRecord)."""

from __future__ import annotations

from dataclasses import dataclass

GROUPING_WINDOW = 256
"""BatchPolicy.grouping_window as the service sets it: no setting exposes it."""


@dataclass(frozen=True)
class QueueBounds:
    """A model's own bounds on its queue, or on one priority level's (Triton's queue policy)."""

    max_requests: int
    """Requests queued at most; 0: no such bound."""
    timeout_s: float
    """How long a request may wait wholly queued; 0: for ever."""
    delay: bool
    """What befalls a request past timeout_s: False, refused when a batch is formed (Triton's
    REJECT); True, it goes behind its level's requests that are not late (Triton's DELAY)."""


NO_BOUNDS = QueueBounds(max_requests=0, timeout_s=0.0, delay=False)


@dataclass(frozen=True)
class BatchPolicy:
    """Every knob of one model's batching. No defaults here: per-model values come from
    the manifest, server-wide ones from Settings (app/loading.py `batch_policy` puts them
    together), so each default has one home."""

    max_batch_size: int
    max_queue_delay_s: float
    max_inflight_batches: int
    """Batches handed to the inference threads at once, running or next in line."""
    inference_threads: int
    """Threads that run this model's batches. Fewer than max_inflight_batches keeps the next
    batch ready behind a running one, so the thread never idles between batches."""
    max_queue_size: int
    """Rows queued at most."""
    max_queue_bytes: int
    """Bytes of input queued at most."""
    queue_bounds: QueueBounds
    """The model's own queue policy (NO_BOUNDS: none); with priority levels, that of the levels
    without their own."""
    priority_levels: int
    """Triton's priority levels: a request of level 1 (the highest) is taken before every queued
    request of level 2, and so on; 0: one level, requests taken in their order."""
    default_priority_level: int
    """The level of a request that asks for none (or for 0)."""
    level_queues: tuple[QueueBounds, ...]
    """Each level's bounds from level 1 on: its own policy's or the model's; empty without levels."""
    retry_after_s: int
    inference_niceness: int
    """Inference threads run this many steps below the event loop's CPU priority (app/tuning.py)."""
    idle_dispatch: bool
    """Run what is queued at once when nothing is running; False: always wait up to
    max_queue_delay_s (or a full batch) for company."""
    inline_rows: int
    """An idle model's batch of at most this many rows runs on the event loop itself,
    without the hand-off to an inference thread and back; 0: never."""
    max_large_batch_size: int
    """Requests of at least max_batch_size rows are batched with each other, never with
    smaller ones, up to this many rows (split beyond it); at most max_batch_size: they
    are split into batches of max_batch_size like any other."""
    grouping_window: int
    """How many queued chunks the length grouping looks at beyond the oldest one: bounds its
    cost per batch, and how far a request can be overtaken."""

    def large(self, rows: int, requests: int = 1) -> bool:
        """Whether `requests` requests of `rows` rows in all are large: at least max_batch_size
        rows each on average. Few large requests leave the event loop little to parse per row,
        so they are batched beyond max_batch_size (app/batching/queue.py) and may run on the
        wide session, which takes the loop's core (app/loading.py). 32 one-image requests in a
        32-row batch ran wide before, and the loop parsing them lost its core for it
        (docs/benchmarks.md, "Batches handed back in one callback")."""
        return rows >= requests * self.max_batch_size

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
    batch_id: int = 0  # as given to on_batch_start
    error: str = ""  # why it failed
    trigger: str = ""  # why it ran when it did: idle (nothing was running), full, or due
    refused: bool = False  # the model refused a request's input: the client's mistake, not a fault
    partly_answered: int | None = None
    """Rows answered where some were and some not (a batch run a request at a time)."""

    @property
    def answered_rows(self) -> int:
        if self.partly_answered is not None:
            return self.partly_answered
        return self.rows if self.ok else 0
