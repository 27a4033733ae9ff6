"""One loaded version as requests use it: leases, retirement, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.errors import DeadlineExceeded
from app.loading import load_version
from app.runtime import ort_options
from app.served_model import ServedModel
from app.settings import Settings
from tests.conftest import model_folder


def started(name: str = "fashion-cnn") -> ServedModel:
    model = load_version(model_folder(name), Settings(warmup=False), ort_options(["CPUExecutionProvider"], 1, 1))
    model.batcher.start()
    return model


def one_row(model: ServedModel) -> dict[str, np.ndarray]:
    spec = model.manifest.inputs[0]
    return {spec.name: np.zeros((1, *spec.shape[1:]), dtype=np.float32)}


async def test_a_model_retires_only_once_no_request_holds_it() -> None:
    model = started()
    lease = model.lease()
    async with lease as held:
        assert held is model
        assert model.leases == 1
        retiring = asyncio.ensure_future(model.retire(grace_s=30))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not retiring.done()  # held: the request that found it is still served
        outputs = await held.infer(one_row(model), time.monotonic() + 10, 10)
        assert len(next(iter(outputs.values()))) == 1
    await asyncio.wait_for(retiring, 10)
    assert model.leases == 0


async def test_a_lease_is_let_go_when_its_block_fails() -> None:
    model = started()
    with pytest.raises(RuntimeError):
        async with model.lease():
            raise RuntimeError("the request failed")
    assert model.leases == 0
    await model.retire(grace_s=1)


async def test_a_request_past_its_deadline_is_not_queued() -> None:
    model = started()
    with pytest.raises(DeadlineExceeded, match="spent before it could be queued"):
        await model.infer(one_row(model), time.monotonic() - 1, 1)
    assert model.batcher.queued_rows == 0
    await model.retire(grace_s=1)


def warmed_up_sizes(settings: Settings) -> tuple[ServedModel, list[int]]:
    """fashion-cnn loaded with `settings`, and the batch sizes its warm-up ran, in order."""
    model = load_version(model_folder("fashion-cnn"), settings, ort_options(["CPUExecutionProvider"], 1, 1))
    sizes: list[int] = []
    real_run = model.session.run

    def counting(inputs: dict[str, np.ndarray], may_go_wide: bool = True) -> dict[str, np.ndarray]:
        sizes.append(len(next(iter(inputs.values()))))
        return real_run(inputs, may_go_wide)

    model.session.run = counting  # type: ignore[method-assign]
    model.warm_up()
    return model, sizes


def test_warm_up_runs_every_batch_size_the_batcher_forms() -> None:
    model, sizes = warmed_up_sizes(Settings(warmup=False, max_large_batch_size=20))
    largest = max(model.batcher.policy.max_batch_size, 20)
    assert sizes[: sizes.index(largest) + 1] == [n for n in (1, 2, 4, 8, 16) if n < largest] + [largest]


@pytest.mark.parametrize(("queue", "most"), [({"max_queue_size": 100}, 100),
                                            ({"max_queue_bytes": 3136 * 50}, 50)])
def test_warm_up_stops_at_the_largest_batch_the_queue_can_hold(queue: dict[str, int], most: int) -> None:
    """A max_batch_size beyond what the queue takes (in items or in bytes) is warmed up to
    what can form, not to its own size (which would allocate a batch that never comes)."""
    _, sizes = warmed_up_sizes(Settings(warmup=False, max_batch_size=1000, **queue))
    assert sizes == [n for n in (1, 2, 4, 8, 16, 32, 64) if n < most] + [most]


async def test_other_holders_keep_a_lone_batch_off_the_loop_when_asked() -> None:
    """A transport whose requests arrive one at a time (gRPC's unary calls) counts the model's
    other holders as on their way: the batch then runs on the inference thread, not inline."""
    model = started()
    ran_on: list[int] = []
    runner = model.batcher._runner
    assert runner is not None
    run = runner.infer

    def spy(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        ran_on.append(threading.get_ident())
        return run(inputs, requests)

    runner.infer = spy  # the started batcher's runner runs every batch, inline or on its thread
    here = threading.get_ident()
    async with model.lease(), model.lease() as held:  # another request holds it too
        await held.infer(one_row(model), time.monotonic() + 10, 10)
        assert ran_on == [here]  # not asked: inline, as HTTP's requests run
        ran_on.clear()
        await held.infer(one_row(model), time.monotonic() + 10, 10, others_on_the_way=True)
        assert ran_on
        assert here not in ran_on
    ran_on.clear()
    async with model.lease() as alone:
        await alone.infer(one_row(model), time.monotonic() + 10, 10, others_on_the_way=True)
        assert ran_on == [here]  # nobody else holds it: inline
        ran_on.clear()
        # the transport knows its client has another in flight (a gRPC stream's earlier
        # message, answered by the model but not yet on the wire): off the loop too
        await alone.infer(one_row(model), time.monotonic() + 10, 10, in_flight_beside=1)
        assert ran_on
        assert here not in ran_on
    await model.retire(grace_s=1)
