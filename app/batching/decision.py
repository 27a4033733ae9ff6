"""The one batching decision: run a batch now on the event loop, hand it to an inference
thread now, or wait for company.

Every place that dispatches work asks `decide`: a request as it arrives (inline, or into
the queue), the batch former before it takes a batch (now, or wait for a fuller one), and
the runner with the batch it was handed (inline, or on a thread).
"""

from __future__ import annotations

from enum import StrEnum

from app.batching.policy import BatchPolicy


class Decision(StrEnum):
    INLINE = "inline"
    """Run now, on the event loop: for a small model the hand-off to a thread and back
    costs as much as the run. Only when nothing runs and nothing else waits: under load,
    every request would find the model idle between inline runs and none would be batched."""
    RUN = "run"
    """Hand the batch to an inference thread now: nothing is running (waiting pays only
    while a batch runs, the next one filling behind it), or the batch is full."""
    WAIT = "wait"
    """Wait for a fuller batch, at most max_queue_delay_s after its oldest row."""


def decide(policy: BatchPolicy, rows: int, running: int, waiting: int) -> Decision:
    """`rows`: the rows at hand (an arriving request's, or a batch's); `running`: batches
    in flight; `waiting`: requests or rows waiting besides them (any at all rules out
    running inline, which would make them wait behind the event loop)."""
    idle = policy.idle_dispatch and running == 0
    if idle and waiting == 0 and rows <= policy.inline_rows:
        return Decision.INLINE
    if idle or rows >= policy.max_batch_size:
        return Decision.RUN
    return Decision.WAIT


def trigger(policy: BatchPolicy, rows: int, decision: Decision) -> str:
    """Why a batch ran when it did, for its record: full, idle (nothing was running), or due
    (its oldest row had waited max_queue_delay_s)."""
    if rows >= policy.max_batch_size:
        return "full"
    return "due" if decision is Decision.WAIT else "idle"
