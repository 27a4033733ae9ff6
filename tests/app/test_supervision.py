"""Supervision: the batch former restarts if it dies, a stalled batch marks the model not
ready, and a model whose batches keep failing answers 503 at once for a cool-down."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batching import DynamicBatcher
from app.errors import ModelNotReady
from app.supervision import BatchHealth
from tests.app.conftest import batch_policy


def rows(value: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[value]], dtype=np.float32)}


async def test_a_dead_batch_former_is_restarted_and_queued_requests_are_served() -> None:
    restarts: list[BaseException] = []
    batcher = DynamicBatcher("m", lambda inputs, requests: {"y": inputs["x"] * 2}, batch_policy(), on_restart=restarts.append)
    original = batcher._queue.wait_for_batch
    calls = 0

    async def dies_once(wait: bool = True) -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the batch former")
        return await original(wait)

    batcher._queue.wait_for_batch = dies_once  # type: ignore[method-assign]
    batcher.start()
    out = await asyncio.wait_for(await batcher.run_or_queue(rows(3)), 5)
    np.testing.assert_array_equal(out["y"], [[6]])
    assert [str(e) for e in restarts] == ["bug in the batch former"]
    await batcher.stop()


def test_a_batch_past_the_inference_timeout_marks_the_model_stalled_until_one_completes() -> None:
    health = BatchHealth("m", failure_threshold=3, cooldown_s=1.0, inference_timeout_s=0.01)
    health.batch_started(1)
    assert not health.check_stalled()
    time.sleep(0.02)
    assert health.check_stalled()
    assert not health.healthy
    health.batch_ended(1, ok=True)
    assert health.healthy
    assert not health.check_stalled()


def test_failed_batches_in_a_row_open_the_breaker_for_the_cool_down() -> None:
    health = BatchHealth("m", failure_threshold=3, cooldown_s=0.05, inference_timeout_s=10)
    for i in range(2):
        health.batch_ended(i, ok=False, error="boom")
    health.check()  # two failures: still taking requests
    health.batch_ended(2, ok=False, error="boom")
    with pytest.raises(ModelNotReady, match="its last 3 batches failed .*boom"):
        health.check()
    assert not health.healthy
    time.sleep(0.06)
    health.check()  # cooled down: tried again
    health.batch_ended(3, ok=True)
    assert health.healthy
    assert health.consecutive_failures == 0


async def test_a_failing_model_answers_503_at_once_after_the_threshold(model_root) -> None:  # type: ignore[no-untyped-def]
    from tests.app.conftest import serving

    async with serving(model_dir=model_root, failure_threshold=2, failure_cooldown_s=60) as client:
        model = client._transport.app.services.repository.get("sst2-lstm")  # type: ignore[attr-defined]
        broken = threading.Event()
        real_run = model.session.run

        def run(inputs: dict[str, np.ndarray], may_go_wide: bool = True) -> dict[str, np.ndarray]:
            if broken.is_set():
                raise RuntimeError("device lost")
            return real_run(inputs, may_go_wide)

        model.session.run = run
        broken.set()
        first = [await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["x"]}) for _ in range(2)]
        assert [r.status_code for r in first] == [500, 500]
        fast = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["x"]})
        assert fast.status_code == 503
        assert "its last 2 batches failed" in fast.json()["error"]
        assert "device lost" in fast.json()["error"]
        assert (await client.get("/v2/models/sst2-lstm/ready")).status_code == 503
        assert (await client.post("/v1/models/fashion-cnn:predict",
                                  json={"instances": [[[0] * 28] * 28]})).status_code == 200
