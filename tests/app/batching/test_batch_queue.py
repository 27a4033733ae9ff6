"""The batch queue alone: admission, batch taking, splitting and length grouping."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.batching.policy import NO_BOUNDS, QueueBounds
from app.batching.queue import BatchQueue
from app.batching.request import PendingRequest
from app.errors import ClientGone, InvalidInput, PayloadTooLarge, QueueFull
from tests.app.conftest import batch_policy


def bounds(requests: int = 0, timeout_s: float = 0.0, delay: bool = False) -> QueueBounds:
    return QueueBounds(max_requests=requests, timeout_s=timeout_s, delay=delay)


def request(n_rows: int, length: int = 0) -> PendingRequest:
    return PendingRequest({"x": np.zeros((n_rows, 1))}, length, asyncio.get_running_loop())


async def test_a_full_batch_is_taken_at_once_in_arrival_order() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=3, max_queue_delay_s=60.0), group_by_length=False)
    first, second = request(2), request(1)
    queue.put(first)
    queue.put(second)
    batch = await asyncio.wait_for(queue.wait_for_batch(), 5)  # full: no 60 s wait
    assert [(c.request, c.rows) for c in batch] == [(first, 2), (second, 1)]
    assert queue.rows == 0


async def test_a_request_larger_than_the_batch_is_split_and_its_rest_stays_first() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=4), group_by_length=False)
    big, small = request(6), request(1)
    queue.put(big)
    queue.put(small)
    first = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in first] == [(big, 0, 4)]
    second = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in second] == [(big, 4, 6), (small, 0, 1)]


async def test_abandoned_requests_are_dropped_and_their_rows_uncounted() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=8), group_by_length=False)
    gone, kept = request(3), request(2)
    queue.put(gone)
    queue.put(kept)
    gone.future.cancel()
    batch = await queue.wait_for_batch()
    assert [c.request for c in batch] == [kept]
    assert queue.rows == 0


async def test_admission_counts_rows_not_requests() -> None:
    queue = BatchQueue("m", batch_policy(max_queue_size=4, retry_after_s=3), group_by_length=False)
    queue.put(request(3))
    with pytest.raises(QueueFull) as full:
        queue.put(request(2))
    assert full.value.headers == {"Retry-After": "3"}
    with pytest.raises(PayloadTooLarge):
        queue.put(request(5))
    queue.put(request(1))
    assert queue.rows == 4


async def test_length_grouping_takes_the_oldest_and_its_nearest_lengths() -> None:
    queue = BatchQueue("t", batch_policy(max_batch_size=3), group_by_length=True)
    reqs = [request(1, length) for length in (10, 50, 11, 49, 12)]
    for r in reqs:
        queue.put(r)
    batch = await queue.wait_for_batch()
    assert [c.request.length for c in batch] == [10, 11, 12]
    rest = await queue.wait_for_batch()
    assert [c.request.length for c in rest] == [50, 49]


async def test_exact_shapes_batch_only_requests_of_the_same_shapes() -> None:
    """A model whose padding is not masked: a batch never mixes lengths (never padded)."""
    queue = BatchQueue("t", batch_policy(max_batch_size=4), group_by_length=False, exact_shapes=True)
    widths = (2, 5, 2, 5, 2)
    for width in widths:
        queue.put(PendingRequest({"x": np.zeros((1, width))}, 0, asyncio.get_running_loop()))
    taken = [[c.request.inputs["x"].shape[1] for c in await queue.wait_for_batch()] for _ in range(2)]
    assert taken == [[2, 2, 2], [5, 5]]


async def test_wait_empty_returns_once_everything_is_taken() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=2), group_by_length=False)
    await asyncio.wait_for(queue.wait_empty(), 1)  # empty from the start
    queue.put(request(2))
    waiter = asyncio.ensure_future(queue.wait_empty())
    await asyncio.sleep(0)
    assert not waiter.done()
    await queue.wait_for_batch()
    await asyncio.wait_for(waiter, 1)


async def test_admission_counts_bytes_too() -> None:
    queue = BatchQueue("m", batch_policy(max_queue_bytes=100, max_batch_size=8), group_by_length=False)
    queue.put(request(8))  # 8 rows of one float64: 64 bytes
    with pytest.raises(QueueFull, match="64 bytes"):
        queue.put(request(8))
    with pytest.raises(PayloadTooLarge, match="queues at most 100"):
        queue.put(request(13))
    await queue.wait_for_batch()
    assert queue.bytes == 0
    queue.put(request(8))  # room again once taken


async def test_a_request_whose_client_hung_up_is_dropped_and_reported() -> None:
    reported: list[PendingRequest] = []
    queue = BatchQueue("m", batch_policy(max_batch_size=8), group_by_length=False, on_hang_up=reported.append)
    gone = {"flag": False}
    hung = PendingRequest({"x": np.zeros((2, 1))}, 0, asyncio.get_running_loop(), lambda: gone["flag"])
    kept = request(1)
    queue.put(hung)
    queue.put(kept)
    gone["flag"] = True
    batch = await queue.wait_for_batch()
    assert [c.request for c in batch] == [kept]
    assert reported == [hung]
    assert hung.hung_up
    with pytest.raises(ClientGone):
        hung.future.result()


async def test_large_requests_batch_with_each_other_up_to_the_large_limit() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=4, max_large_batch_size=16), group_by_length=False)
    big1, small, big2, big3 = request(6), request(1), request(8), request(5)
    for r in (big1, small, big2, big3):
        queue.put(r)
    first = await queue.wait_for_batch()
    # Large requests only (the small one keeps its place), whole, up to 16 rows: the third
    # is split at the limit and its rest stays queued.
    assert [(c.request, c.start, c.stop) for c in first] == [(big1, 0, 6), (big2, 0, 8), (big3, 0, 2)]
    second = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in second] == [(small, 0, 1), (big3, 2, 5)]
    assert queue.rows == 0


async def test_requests_that_each_fill_a_batch_batch_with_each_other() -> None:
    # 32-image requests to a model of max_batch_size 32 ran as batches of one request each:
    # 0.87-0.95x of their throughput batched together (docs/benchmarks.md).
    queue = BatchQueue("m", batch_policy(max_batch_size=4, max_large_batch_size=16), group_by_length=False)
    full = [request(4) for _ in range(5)]
    for r in full:
        queue.put(r)
    first = await queue.wait_for_batch()
    assert [(c.request, c.rows) for c in first] == [(r, 4) for r in full[:4]]
    assert [(c.request, c.rows) for c in await queue.wait_for_batch()] == [(full[4], 4)]


async def test_small_requests_first_in_line_never_join_a_large_batch() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=4, max_large_batch_size=16), group_by_length=False)
    small1, big, small2 = request(2), request(10), request(2)
    for r in (small1, big, small2):
        queue.put(r)
    first = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in first] == [(small1, 0, 2), (big, 0, 2)]  # max_batch_size as before
    second = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in second] == [(big, 2, 10)]  # now large: whole, alone


async def test_without_a_larger_limit_large_requests_are_split_as_before() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=4, max_large_batch_size=4), group_by_length=False)
    big1, big2 = request(6), request(6)
    queue.put(big1)
    queue.put(big2)
    assert [(c.request, c.rows) for c in await queue.wait_for_batch()] == [(big1, 4)]
    assert [(c.request, c.rows) for c in await queue.wait_for_batch()] == [(big1, 2), (big2, 2)]


def test_requests_are_large_where_they_average_a_full_batch() -> None:
    policy = batch_policy(max_batch_size=32)
    assert policy.large(32)  # one 32-image request
    assert policy.large(128, 4)  # four of them
    assert not policy.large(31)
    assert not policy.large(32, 32)  # 32 one-image requests
    assert not policy.large(100, 4)  # three large ones and a small one


async def test_a_models_queue_policy_bounds_its_requests_as_well_as_rows() -> None:
    queue = BatchQueue("m", batch_policy(queue_bounds=bounds(requests=2), retry_after_s=2), group_by_length=False)
    queue.put(request(1))
    queue.put(request(1))
    with pytest.raises(QueueFull) as full:
        queue.put(request(1))
    assert full.value.message == "model 'm' has 2 requests queued, its queue policy's max_queue_size; retry later"
    assert full.value.headers == {"Retry-After": "2"}
    assert len(await queue.wait_for_batch()) == 2
    queue.put(request(1))  # room again once a batch is taken


async def test_a_request_past_the_queue_timeout_is_refused_when_a_batch_forms() -> None:
    queue = BatchQueue("m", batch_policy(max_batch_size=2, queue_bounds=bounds(timeout_s=0.05)), group_by_length=False)
    late, split = request(1), request(3)
    queue.put(late)
    queue.put(split)
    late.enqueued_at -= 1.0  # waited a second already
    first = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in first] == [(split, 0, 2)]
    with pytest.raises(QueueFull, match=r"waited 10\d\d\.\d ms in the queue of model 'm', past its queue policy's timeout of 50 ms"):
        late.future.result()
    split.enqueued_at -= 1.0  # its first rows ran: the rest is not refused
    rest = await queue.wait_for_batch()
    assert [(c.request, c.start, c.stop) for c in rest] == [(split, 2, 3)]
    fresh = request(1)
    queue.put(fresh)
    assert [c.request for c in await queue.wait_for_batch()] == [fresh]
    assert queue.rows == 0


def levels(levels: int = 3, default: int = 2, **policy: object) -> BatchQueue:
    """A queue with Triton's priority levels, every level bounded by `level_queues` if given."""
    each = policy.pop("level_queues", (NO_BOUNDS,) * levels)
    return BatchQueue("m", batch_policy(priority_levels=levels, default_priority_level=default,
                                        level_queues=each, **policy), group_by_length=False)


def at(queue: BatchQueue, n_rows: int, priority: int) -> PendingRequest:
    queued = PendingRequest({"x": np.zeros((n_rows, 1))}, 0, asyncio.get_running_loop(),
                            priority=queue.level_of(priority))
    queue.put(queued)
    return queued


async def test_a_higher_priority_is_taken_first_and_each_level_keeps_its_order() -> None:
    queue = levels(max_batch_size=3)
    low1, default1, low2, high, default2 = at(queue, 1, 3), at(queue, 1, 0), at(queue, 1, 3), at(queue, 2, 1), \
        at(queue, 1, 2)
    assert default1.priority == 2  # 0: the model's default level
    first = await queue.wait_for_batch()
    # the high request whole, then the oldest of the next level: the batch is full
    assert [(c.request, c.rows) for c in first] == [(high, 2), (default1, 1)]
    second = await queue.wait_for_batch()
    assert [c.request for c in second] == [default2, low1, low2]
    assert queue.rows == 0


async def test_a_request_split_keeps_its_level_ahead_of_lower_ones() -> None:
    queue = levels(max_batch_size=2)
    low, high = at(queue, 1, 3), at(queue, 3, 1)
    assert [(c.request, c.start, c.stop) for c in await queue.wait_for_batch()] == [(high, 0, 2)]
    assert [(c.request, c.start, c.stop) for c in await queue.wait_for_batch()] == [(high, 2, 3), (low, 0, 1)]


async def test_a_priority_past_the_levels_is_the_clients_mistake() -> None:
    queue = levels(levels=2, default=1)
    with pytest.raises(InvalidInput, match=r"parameters.priority 3: model 'm' has priority levels 1 \(the highest\) "
                                           r"to 2; 0 or none is its default, 1"):
        queue.level_of(3)
    assert [queue.level_of(p) for p in (0, 1, 2)] == [1, 1, 2]
    # Without levels every priority is the one level, as Triton serves such a model.
    assert BatchQueue("m", batch_policy(), group_by_length=False).level_of(7) == 0


async def test_each_level_has_its_own_bound_on_requests_queued() -> None:
    queue = levels(levels=2, default=2, level_queues=(bounds(requests=1), NO_BOUNDS), retry_after_s=2)
    at(queue, 1, 1)
    with pytest.raises(QueueFull, match="has 1 requests of priority 1 queued, its queue policy's max_queue_size"):
        at(queue, 1, 1)
    for _ in range(3):  # level 2 is not bounded
        at(queue, 1, 2)
    await queue.wait_for_batch()  # level 1's request taken: room at its level again
    at(queue, 1, 1)


async def test_each_level_has_its_own_queue_timeout() -> None:
    queue = levels(levels=2, default=2, level_queues=(NO_BOUNDS, bounds(timeout_s=0.001)), max_batch_size=8)
    patient, impatient = at(queue, 1, 1), at(queue, 1, 2)
    await asyncio.sleep(0.01)  # past level 2's 1 ms (a lower bound: a busy machine only waits longer)
    batch = await queue.wait_for_batch()
    assert [c.request for c in batch] == [patient]
    with pytest.raises(QueueFull, match="past its queue policy's timeout of 1 ms"):
        impatient.future.result()


async def test_a_batch_waiting_for_company_is_due_by_its_oldest_request_whatever_its_level() -> None:
    queue = levels(max_batch_size=8, max_queue_delay_s=60.0, idle_dispatch=False)
    low = at(queue, 1, 3)
    low.enqueued_at -= 120  # waited past its delay long ago
    high = at(queue, 1, 1)  # came just now: its own delay has a minute to go
    batch = await asyncio.wait_for(queue.wait_for_batch(), 30)
    assert [c.request for c in batch] == [high, low]


async def test_length_grouping_fills_a_batch_from_the_higher_level_first() -> None:
    queue = BatchQueue("t", batch_policy(max_batch_size=2, priority_levels=2, default_priority_level=2,
                                         level_queues=(NO_BOUNDS, NO_BOUNDS)), group_by_length=True)
    for length, priority in ((10, 1), (10, 2), (40, 1)):
        queue.put(PendingRequest({"x": np.zeros((1, 1))}, length, asyncio.get_running_loop(), priority=priority))
    batch = await queue.wait_for_batch()
    assert [(c.request.length, c.request.priority) for c in batch] == [(10, 1), (40, 1)]


async def test_a_request_past_a_delay_timeout_goes_behind_those_not_late() -> None:
    """Triton's DELAY: late, it is served once its level's requests that are not are, and
    those that come after it; without levels, the one level's."""
    queue = BatchQueue("m", batch_policy(max_batch_size=1, queue_bounds=bounds(timeout_s=0.05, delay=True)),
                       group_by_length=False)
    late, fresh = request(1), request(1)
    queue.put(late)
    queue.put(fresh)
    late.enqueued_at -= 1.0
    assert [c.request for c in await queue.wait_for_batch()] == [fresh]
    newer = request(1)
    queue.put(newer)  # not late: ahead of the late one, which is never refused
    assert [c.request for c in await queue.wait_for_batch()] == [newer]
    assert [c.request for c in await queue.wait_for_batch()] == [late]
    assert not late.future.done()  # served by the runner, not failed here


async def test_a_late_request_stays_ahead_of_lower_levels() -> None:
    queue = levels(levels=2, default=2, level_queues=(bounds(timeout_s=0.05, delay=True), NO_BOUNDS),
                   max_batch_size=1)
    late_high, high, low = at(queue, 1, 1), at(queue, 1, 1), at(queue, 1, 2)
    late_high.enqueued_at -= 1.0
    taken = [(await queue.wait_for_batch())[0].request for _ in range(3)]
    assert taken == [high, late_high, low]
