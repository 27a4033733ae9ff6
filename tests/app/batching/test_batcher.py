"""The batcher alone: no HTTP, no ONNX. Gates are asyncio/threading events, not sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.batching import BatchRecord, DynamicBatcher
from app.batching.collate import concatenate_padded
from app.batching.decision import Decision, decide, trigger
from app.errors import InferenceFailed, ModelNotReady, PayloadTooLarge, QueueFull
from tests.app.conftest import batch_policy


class Recorder:
    """An infer function that doubles its input and remembers each batch it saw.

    `entered` is set when a batch reaches it; with a `gate`, the batch then waits there
    until the test opens the gate."""

    def __init__(self, gate: threading.Event | None = None, fail_when: float | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.fail_when = fail_when
        self.entered = threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5), "test gate never opened"
        if self.fail_when is not None and (x == self.fail_when).any():
            raise RuntimeError("poisoned batch")
        return {"y": x * 2}

    async def wait_entered(self) -> None:
        """Until a batch is inside the model (blocked there if gated)."""
        assert await asyncio.to_thread(self.entered.wait, 5), "no batch reached the model"


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1)}


async def until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Yield to the event loop until `condition` holds: loop turns, not wall-clock time."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def make(infer: object, on_batch: Callable[[BatchRecord], None] | None = None, **policy: object) -> DynamicBatcher:
    batcher = DynamicBatcher("m", infer, batch_policy(**policy), on_batch=on_batch)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def running_behind_a_gate(**policy: object) -> tuple[Recorder, threading.Event, DynamicBatcher, Any]:
    """A batcher whose first request (1 row) is running, held in the model until the gate opens."""
    gate = threading.Event()
    infer = Recorder(gate)
    batcher = make(infer, **policy)
    running = await batcher.run_or_queue(rows(1))
    await infer.wait_entered()
    return infer, gate, batcher, running


async def test_each_request_gets_its_own_rows_back_in_order() -> None:
    infer = Recorder()
    batcher = make(infer, max_queue_delay_s=10.0, max_batch_size=6)
    futures = [await batcher.run_or_queue(rows(i, i + 0.5)) for i in range(3)]  # 6 rows fill the batch
    results = await asyncio.gather(*futures)
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"].ravel(), [2 * i, 2 * i + 1])
    assert len(infer.batches) == 1  # the full batch ran without waiting 10 s
    await batcher.stop()


async def test_batches_never_exceed_max_batch_size_and_large_requests_are_split() -> None:
    gate = threading.Event()
    infer = Recorder(gate)
    batcher = make(infer, max_batch_size=4)
    big = await batcher.run_or_queue(rows(*range(10)))
    small = await batcher.run_or_queue(rows(100))
    gate.set()
    out_big, out_small = await asyncio.gather(big, small)
    np.testing.assert_array_equal(out_big["y"].ravel(), np.arange(10) * 2)
    np.testing.assert_array_equal(out_small["y"].ravel(), [200])
    assert [len(b) for b in infer.batches] == [4, 4, 3]  # the last batch holds the tail and `small`
    await batcher.stop()


def recorded(**policy: Any) -> tuple[DynamicBatcher, list[BatchRecord]]:
    """A started batcher of the doubling Recorder model, and the records of its batches."""
    records: list[BatchRecord] = []
    return make(Recorder(), on_batch=records.append, **policy), records


async def test_an_idle_model_runs_a_request_at_once_whatever_the_delay() -> None:
    batcher, records = recorded(max_batch_size=64, max_queue_delay_s=3600.0)
    out = await asyncio.wait_for(await batcher.run_or_queue(rows(1)), 10)  # an hour's delay is not waited out
    np.testing.assert_array_equal(out["y"], [[2]])
    await batcher.stop()
    assert [(r.rows, r.trigger) for r in records] == [(1, "idle")]


async def test_while_a_batch_runs_the_next_one_waits_for_company_until_full_or_due() -> None:
    gate = threading.Event()
    infer = Recorder(gate)
    records: list[BatchRecord] = []
    batcher = DynamicBatcher("m", infer, batch_policy(max_batch_size=3, max_queue_delay_s=0.05,
                                                      max_inflight_batches=3, inference_threads=3),
                             on_batch=records.append)
    batcher.start()
    first = await batcher.run_or_queue(rows(0))
    await infer.wait_entered()  # running: the model is not idle any more
    full = [await batcher.run_or_queue(rows(i)) for i in (1, 2, 3)]  # a whole batch: no waiting
    lone = await batcher.run_or_queue(rows(4))  # waits for company until its delay is up
    for _ in range(500):  # all three in the model (the gate is shut): bounded, not a guess
        if len(infer.batches) == 3:
            break
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *full, lone)
    await batcher.stop()
    records.sort(key=lambda r: r.batch_id)  # in the order they were formed
    assert [(r.rows, r.trigger) for r in records] == [(1, "idle"), (3, "full"), (1, "due")]
    assert records[2].queue_waits_s[0] >= 0.04  # the lone request did wait out (most of) its delay


async def test_a_batch_waiting_for_company_runs_as_soon_as_the_model_goes_idle() -> None:
    gate = threading.Event()
    infer = Recorder(gate)
    records: list[BatchRecord] = []
    batcher = DynamicBatcher("m", infer, batch_policy(max_batch_size=8, max_queue_delay_s=3600.0,
                                                      max_inflight_batches=2), on_batch=records.append)
    batcher.start()
    first = await batcher.run_or_queue(rows(0))
    await infer.wait_entered()
    second = await batcher.run_or_queue(rows(1))  # would wait an hour for company while `first` runs
    gate.set()  # `first` ends: the model is idle, so `second` goes now
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    await batcher.stop()
    assert [r.trigger for r in sorted(records, key=lambda r: r.batch_id)] == ["idle", "idle"]


async def test_without_idle_dispatch_a_lone_request_waits_for_company() -> None:
    records: list[BatchRecord] = []
    batcher = DynamicBatcher("m", Recorder(), batch_policy(max_batch_size=64, max_queue_delay_s=0.05,
                                                           idle_dispatch=False), on_batch=records.append)
    batcher.start()
    await (await batcher.run_or_queue(rows(1)))
    await batcher.stop()
    assert [(r.rows, r.trigger) for r in records] == [(1, "due")]
    assert records[0].queue_waits_s[0] >= 0.04


async def test_requests_queued_while_a_batch_runs_form_the_next_batch() -> None:
    gate = threading.Event()
    infer = Recorder(gate)
    batcher = make(infer, max_batch_size=8)
    first = await batcher.run_or_queue(rows(0))
    await infer.wait_entered()  # the first batch is blocked inside the model
    later = [await batcher.run_or_queue(rows(i)) for i in range(1, 6)]
    gate.set()
    await asyncio.gather(first, *later)
    assert [len(b) for b in infer.batches] == [1, 5]
    await batcher.stop()


class ThreadTracker:
    """An infer function that records which thread ran each batch and how many ran at once."""

    def __init__(self, gate: threading.Event, expected_at_once: int) -> None:
        self.gate = gate
        self.threads: list[int] = []
        self.running = self.most_running = 0
        self._lock = threading.Lock()
        self.all_in = threading.Event()  # set when `expected_at_once` batches run together
        self.expected_at_once = expected_at_once

    def __call__(self, inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        with self._lock:
            self.threads.append(threading.get_ident())
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            if self.running == self.expected_at_once:
                self.all_in.set()
        assert self.gate.wait(5), "test gate never opened"
        with self._lock:
            self.running -= 1
        return {"y": inputs["x"]}


async def test_one_inference_thread_runs_in_flight_batches_one_after_another() -> None:
    gate = threading.Event()
    infer = ThreadTracker(gate, expected_at_once=1)
    batcher = make(infer, max_batch_size=1, max_inflight_batches=2, inference_threads=1)
    futures = [await batcher.run_or_queue(rows(i)) for i in range(4)]
    assert await asyncio.to_thread(infer.all_in.wait, 5)
    # Two batches are handed over (one running, one ready behind it); two rows still queue.
    await until(lambda: batcher.inflight_batches == 2)
    assert batcher.queued_rows == 2
    gate.set()
    await asyncio.gather(*futures)
    await batcher.stop()
    # ... but one thread runs them, one at a time.
    assert len(infer.threads) == 4
    assert len(set(infer.threads)) == 1
    assert infer.most_running == 1


async def test_two_inference_threads_run_two_batches_at_once() -> None:
    gate = threading.Event()
    infer = ThreadTracker(gate, expected_at_once=2)
    batcher = make(infer, max_batch_size=1, max_inflight_batches=2, inference_threads=2)
    futures = [await batcher.run_or_queue(rows(i)) for i in range(2)]
    assert await asyncio.to_thread(infer.all_in.wait, 5), "two batches never ran at once"
    gate.set()
    await asyncio.gather(*futures)
    await batcher.stop()
    assert infer.most_running == 2


async def test_a_failing_batch_fails_only_its_own_requests() -> None:
    infer = Recorder(fail_when=-1.0)
    batcher = make(infer, max_batch_size=2)
    bad = [await batcher.run_or_queue(rows(-1)), await batcher.run_or_queue(rows(1))]  # one batch, poisoned
    good = [await batcher.run_or_queue(rows(2)), await batcher.run_or_queue(rows(3))]  # the next batch
    results = await asyncio.gather(*bad, *good, return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) for r in results[:2])
    assert "poisoned batch" in str(results[0])
    np.testing.assert_array_equal(results[2]["y"], [[4]])
    np.testing.assert_array_equal(results[3]["y"], [[6]])
    await batcher.stop()


async def test_a_model_returning_the_wrong_number_of_rows_fails_that_batch() -> None:
    batcher = make(lambda inputs, requests: {"y": inputs["x"][:1]}, max_batch_size=2, max_queue_delay_s=10.0)
    results = await asyncio.gather(await batcher.run_or_queue(rows(1)), await batcher.run_or_queue(rows(2)), return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) and "returned 1 rows" in str(r) for r in results)
    await batcher.stop()


async def test_cancelled_waiting_request_is_dropped_before_it_runs() -> None:
    infer, gate, batcher, running = await running_behind_a_gate(max_batch_size=1)
    cancelled = await batcher.run_or_queue(rows(99))
    kept = await batcher.run_or_queue(rows(3))
    cancelled.cancel()
    gate.set()
    await asyncio.gather(running, kept)
    seen = [float(b[0, 0]) for b in infer.batches]
    assert seen == [1.0, 3.0]
    assert batcher.queued_rows == 0
    await batcher.stop()


async def test_queue_full_is_refused_with_retry_after_and_oversized_requests_with_413() -> None:
    gate = threading.Event()
    batcher = make(Recorder(gate), max_batch_size=1, max_queue_size=3, retry_after_s=7)
    futures = [await batcher.run_or_queue(rows(i)) for i in range(3)]
    with pytest.raises(QueueFull) as err:
        await batcher.run_or_queue(rows(1, 2, 3))
    assert err.value.headers == {"Retry-After": "7"}
    with pytest.raises(PayloadTooLarge, match="queues at most 3"):
        await batcher.run_or_queue(rows(1, 2, 3, 4))
    gate.set()
    await asyncio.gather(*futures)
    await batcher.stop()


async def test_length_grouping_batches_similar_lengths_together() -> None:
    gate, entered = threading.Event(), threading.Event()
    seen_widths: list[list[int]] = []

    def infer(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        entered.set()
        assert gate.wait(5)
        seen_widths.append(inputs["lengths"].tolist())
        return {"y": inputs["lengths"].astype(np.float32)}

    batcher = DynamicBatcher("t", infer, batch_policy(max_batch_size=2), length_of=lambda t: t["ids"].shape[1])
    batcher.start()

    def text(n: int) -> dict[str, np.ndarray]:
        return {"ids": np.ones((1, n), np.int64), "lengths": np.array([n])}

    first = await batcher.run_or_queue(text(3))
    assert await asyncio.to_thread(entered.wait, 5)  # the first batch holds the gate; the rest queue up
    queued = [await batcher.run_or_queue(text(n)) for n in (40, 4, 41, 5)]
    gate.set()
    results = await asyncio.gather(first, *queued)
    assert [r["y"].tolist() for r in results] == [[3], [40], [4], [41], [5]]
    # oldest first (40), with its closest neighbour (41); then 4 with 5
    assert seen_widths == [[3], [40, 41], [4, 5]]
    await batcher.stop()


async def test_stop_finishes_queued_work() -> None:
    infer = Recorder()
    batcher = make(infer, max_batch_size=2, max_queue_delay_s=0.5)
    future = await batcher.run_or_queue(rows(5))
    await batcher.stop()
    np.testing.assert_array_equal(future.result()["y"], [[10]])


async def test_stop_waits_for_a_running_batch_then_refuses_new_requests() -> None:
    gate = threading.Event()
    infer = Recorder(gate)
    batcher = make(infer)
    future = await batcher.run_or_queue(rows(5))
    await infer.wait_entered()
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0)  # let stop() start waiting
    assert not stopping.done()
    assert not future.done()
    with pytest.raises(ModelNotReady):
        await batcher.run_or_queue(rows(6))
    gate.set()
    await stopping
    np.testing.assert_array_equal(future.result()["y"], [[10]])


async def test_stop_fails_what_is_still_queued_after_its_timeout() -> None:
    infer, gate, batcher, running = await running_behind_a_gate(max_batch_size=1)
    stuck = await batcher.run_or_queue(rows(2))
    stopping = asyncio.ensure_future(batcher.stop(timeout_s=0.01))
    # The timeout passes while the gate is shut: the queued request fails with 503 ...
    with pytest.raises(ModelNotReady, match="shutting down"):
        await stuck
    await stopping  # ... stop() returns without waiting for the stuck batch ...
    assert not running.done()
    gate.set()  # ... which still answers its request when it ends.
    np.testing.assert_array_equal((await running)["y"], [[2]])


async def test_on_batch_reports_rows_and_queue_waits() -> None:
    records: list[BatchRecord] = []
    batcher = DynamicBatcher("m", Recorder(), batch_policy(max_batch_size=3, max_queue_delay_s=10.0),
                             on_batch=records.append)
    batcher.start()
    await asyncio.gather(await batcher.run_or_queue(rows(1, 2)), await batcher.run_or_queue(rows(3)))
    await batcher.stop()
    assert [(r.rows, len(r.queue_waits_s), r.ok) for r in records] == [(3, 2, True)]


def test_concatenate_padded_pads_the_sequence_axis_with_zeros() -> None:
    a = {"ids": np.array([[1, 2, 3]]), "n": np.array([3])}
    b = {"ids": np.array([[4]]), "n": np.array([1])}
    out = concatenate_padded([a, b])
    np.testing.assert_array_equal(out["ids"], [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(out["n"], [3, 1])


async def test_an_idle_models_small_batch_runs_on_the_loop_and_others_in_a_thread() -> None:
    threads: list[int] = []

    def infer(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return {"y": inputs["x"]}

    here = threading.get_ident()
    for inline_rows, request_rows, on_loop in ((1, 1, True), (1, 2, False), (0, 1, False)):
        threads.clear()
        batcher = make(infer, inline_rows=inline_rows)
        await (await batcher.run_or_queue(rows(*range(request_rows))))
        await batcher.stop()
        assert (threads == [here]) is on_loop, (inline_rows, request_rows)


async def test_no_batch_runs_on_the_loop_while_other_requests_are_on_their_way() -> None:
    """gRPC's unary calls reach an idle model one at a time; told that others are on their
    way, neither the request nor the batch the queue launches for it runs on the loop, and
    once nobody is on the way a lone request runs there again."""
    threads: list[int] = []

    def infer(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return {"y": inputs["x"]}

    here = threading.get_ident()
    batcher = make(infer, inline_rows=1)
    await (await batcher.run_or_queue(rows(1), on_the_way=3))
    assert threads
    assert here not in threads
    threads.clear()
    await (await batcher.run_or_queue(rows(1), on_the_way=0))
    assert threads == [here]
    await batcher.stop()


async def test_a_request_arriving_beside_others_goes_through_the_queue_even_when_idle() -> None:
    """Under load every request would find the model idle between inline runs: only one
    that no other is waiting beside skips the queue, so that load is still batched."""
    recorder = Recorder()
    batcher = make(recorder, inline_rows=1)
    alone = await batcher.run_or_queue(rows(1))
    assert alone.done()  # answered inline: no queue, no batch-forming turn
    first, second = await asyncio.gather(batcher.run_or_queue(rows(2)), batcher.run_or_queue(rows(3)))
    np.testing.assert_array_equal((await first)["y"], [[4]])
    np.testing.assert_array_equal((await second)["y"], [[6]])
    await batcher.stop()
    assert [batch.ravel().tolist() for batch in recorder.batches] == [[1], [2, 3]]  # queued, then batched together


async def test_run_or_queue_runs_a_lone_request_at_once_and_batches_a_crowd() -> None:
    batcher, records = recorded(inline_rows=1, max_batch_size=64)
    await (await batcher.run_or_queue(rows(1)))  # alone: one batch of one
    crowd = await asyncio.gather(*(batcher.run_or_queue(rows(i)) for i in range(10)))  # arrive together
    await asyncio.gather(*crowd)
    await batcher.stop()
    assert [r.rows for r in sorted(records, key=lambda r: r.batch_id)][0] == 1
    assert max(r.rows for r in records[1:]) > 1  # the crowd was batched, not run one by one inline


# rows at hand, batches running, requests or rows waiting besides, idle_dispatch -> decision
DECISIONS = [
    (1, 0, 0, True, Decision.INLINE),  # alone, small, idle: run on the loop
    (2, 0, 0, True, Decision.RUN),  # idle but over inline_rows: a thread, at once
    (1, 0, 1, True, Decision.RUN),  # idle, but another waits beside it: not inline
    (1, 1, 0, True, Decision.WAIT),  # a batch runs: the next one fills behind it
    (3, 2, 5, True, Decision.WAIT),
    (8, 1, 0, True, Decision.RUN),  # full: nothing to wait for
    (9, 1, 0, True, Decision.RUN),
    (1, 0, 0, False, Decision.WAIT),  # told to always wait for company
    (8, 0, 0, False, Decision.RUN),  # ... unless the batch is full
]


@pytest.mark.parametrize(("rows_at_hand", "running", "waiting", "idle_dispatch", "expected"), DECISIONS)
def test_decide(rows_at_hand: int, running: int, waiting: int, idle_dispatch: bool, expected: Decision) -> None:
    policy = batch_policy(max_batch_size=8, inline_rows=1, idle_dispatch=idle_dispatch)
    assert decide(policy, rows_at_hand, running, waiting) is expected


def test_decide_never_runs_inline_with_inline_rows_0() -> None:
    policy = batch_policy(max_batch_size=8, inline_rows=0)
    assert decide(policy, 1, 0, 0) is Decision.RUN


@pytest.mark.parametrize(("rows_at_hand", "decision", "expected"), [
    (8, Decision.RUN, "full"), (8, Decision.INLINE, "full"), (3, Decision.RUN, "idle"),
    (1, Decision.INLINE, "idle"), (3, Decision.WAIT, "due")])
def test_trigger_says_why_a_batch_ran(rows_at_hand: int, decision: Decision, expected: str) -> None:
    assert trigger(batch_policy(max_batch_size=8), rows_at_hand, decision) == expected


async def test_the_model_hears_how_many_requests_a_batch_holds() -> None:
    """What the runtime uses to keep batches of many small requests off its wide session."""
    seen: list[tuple[int, int]] = []
    gate, entered = threading.Event(), threading.Event()

    def infer(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        seen.append((len(inputs["x"]), requests))
        entered.set()
        assert gate.wait(5), "test gate never opened"
        return {"y": inputs["x"]}

    batcher = make(infer, max_batch_size=8)
    held = await batcher.run_or_queue(rows(0))  # runs, and waits in the model for the gate
    assert await asyncio.to_thread(entered.wait, 5)
    crowd = await asyncio.gather(*(batcher.run_or_queue(rows(i, i)) for i in range(1, 4)))  # 3 requests, 6 rows
    gate.set()
    await asyncio.gather(held, *crowd)
    await (await batcher.run_or_queue(rows(*range(5))))  # one request of 5 rows
    await batcher.stop()
    assert seen == [(1, 1), (6, 3), (5, 1)]


async def test_a_handed_over_batch_that_never_ran_fails_when_the_threads_shut_down() -> None:
    """A batch waiting for the inference thread when its threads are let go (a drain that ran
    out of time) is answered 503 and gives its slot back; the running one still answers."""
    infer, gate, batcher, running = await running_behind_a_gate(max_batch_size=1, max_inflight_batches=2)
    waiting = await batcher.run_or_queue(rows(2))
    await until(lambda: batcher.inflight_batches == 2)  # handed over, behind the running batch
    assert batcher._runner is not None
    batcher._runner.shutdown()
    with pytest.raises(ModelNotReady, match="shutting down"):
        await asyncio.wait_for(waiting, 5)  # not left hanging
    assert batcher.inflight_batches == 1
    gate.set()
    np.testing.assert_array_equal((await running)["y"], [[2]])
    await until(lambda: batcher.inflight_batches == 0)
