"""Process tuning: the garbage collector settings, the inference threads' priority, and
threads named in the system."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading

import numpy as np
import pytest

from app.batching import DynamicBatcher
from app.offload import Offload
from app.tuning import YOUNG_GENERATION_THRESHOLD, lower_thread_priority, settle_heap
from tests.app.conftest import batch_policy

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _os_name_of_this_thread() -> str:
    return open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip()


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_settle_heap_freezes_what_is_loaded_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@linux_only
def test_lower_thread_priority_changes_only_the_calling_thread() -> None:
    seen: list[int] = []

    def worker() -> None:
        before = _nice_of_this_thread()
        lower_thread_priority(3)
        seen.extend([before, _nice_of_this_thread()])

    main_before = _nice_of_this_thread()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen[1] == min(19, seen[0] + 3)
    assert _nice_of_this_thread() == main_before


@linux_only
async def test_batches_run_in_threads_below_the_event_loops_priority() -> None:
    niceness: list[int] = []

    def infer(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        niceness.append(_nice_of_this_thread())
        return {"y": inputs["x"]}

    batcher = DynamicBatcher("m", infer, batch_policy(inference_niceness=4))
    batcher.start()
    await asyncio.gather(*[await batcher.run_or_queue({"x": np.zeros((1, 1), np.float32)}) for _ in range(3)])
    await batcher.stop()
    assert niceness
    assert all(n == min(19, _nice_of_this_thread() + 4) for n in niceness)


@linux_only
async def test_pool_threads_carry_their_names_in_the_system() -> None:
    """`top -H` and CPU time by thread (load_tests/server.py) tell the inference and decode
    threads from the event loop by the name the system has for them (15 bytes at most)."""
    names: list[str] = []

    def infer(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        names.append(_os_name_of_this_thread())
        return {"y": inputs["x"]}

    batcher = DynamicBatcher("fashion-cnn", infer, batch_policy())
    batcher.start()
    await asyncio.gather(*[await batcher.run_or_queue({"x": np.zeros((1, 1), np.float32)}) for _ in range(3)])
    await batcher.stop()
    offload = Offload(1)
    decoded_on = await offload.run(_os_name_of_this_thread)
    offload.shutdown()
    assert names
    assert set(names) == {"infer-fashion-c"}  # "infer-fashion-cnn_0", cut to 15 bytes
    assert decoded_on == "decode_0"
    assert _os_name_of_this_thread() != "decode_0"  # the loop's own thread keeps its name
