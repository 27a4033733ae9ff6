"""One heap per serving process (app/tuning.py `one_heap`): every thread's allocations lie
where malloc_trim returns them, so the resident size comes back after a burst of large
requests, whichever threads decoded them."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.tuning import MemoryReturn
from load_tests import samples
from load_tests.server import ServerProcess, resident_kb
from tests.app.conftest import copy_model
from tests.conftest import MODELS, ROOT

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas and malloc_trim are glibc's")

BURST = r"""
import gzip, json, os, sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np, orjson

from app.errors import PayloadTooLarge
from app.http.encodings import unpacked
from app.tuning import one_heap, return_free_memory
from load_tests.server import resident_kb

if sys.argv[1] == "one heap":
    assert one_heap()

def resident_mb():
    return resident_kb(os.getpid()) / 1024

# What a burst of large requests leaves on the decode threads (app/offload.py): large V2 JSON
# bodies parsed, then gzip bodies that unpack past the 16 MB limit (the hostile suite's order).
LIMIT = 16 << 20
bomb = gzip.compress(bytes(64 << 20), 9)
large = orjson.dumps({"inputs": [{"name": "x", "shape": [1000, 784], "datatype": "FP32",
                                  "data": np.random.default_rng(0).random(784_000).round(3).tolist()}]})

def parse(_):
    body = orjson.loads(large)  # held while its array is made, as a request's decode holds it
    return np.array(body["inputs"][0]["data"], dtype=np.float32).sum()

def unpack(_):
    try:
        unpacked(bomb, "gzip", LIMIT)
    except PayloadTooLarge:
        return True

before = resident_mb()
with ThreadPoolExecutor(4) as decode_threads:
    list(decode_threads.map(parse, range(8)))
    return_free_memory()
    for _ in range(3):
        assert all(decode_threads.map(unpack, range(16)))
    return_free_memory()  # as the server does once no large body is held (app/http/budget.py)
    print(json.dumps({"before": before, "after": resident_mb()}))
"""


def _burst(way: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", BURST, way], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@glibc_only
def test_after_a_burst_on_decode_threads_the_trim_returns_what_they_held() -> None:
    """Each decode thread had an arena of its own, whose free end malloc_trim does not
    return: without one_heap the same burst ended 94-95 MB up, in every run (glibc 2.36,
    when this was written); with it, 1-4 MB down."""
    seen = _burst("one heap")
    assert seen["after"] - seen["before"] < 16, seen


def test_one_heap_leaves_an_arena_count_the_environment_gives_alone() -> None:
    code = "from app.tuning import one_heap; print(one_heap())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "MALLOC_ARENA_MAX": "4"},
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False"]


def extra_arenas(pid: int) -> int:
    """glibc arenas besides the main heap in a process: each is a 64 MiB-aligned reservation of
    64 MiB, its used part read-write and the rest reserved (---p), neither named. A mapping
    read-write through all 64 MiB is not counted: numpy's OpenBLAS keeps a buffer of that size,
    which now and then lands 64 MiB-aligned (glibc's own count, malloc_info, said one heap then)."""
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        regions.append((start, end, fields[1], len(fields) > 5))
    found = 0
    for i, (start, end, mode, named) in enumerate(regions):
        if named or start % (64 << 20) or not mode.startswith("rw"):
            continue
        following = regions[i + 1] if i + 1 < len(regions) else None
        if following and following[0] == end and following[2] == "---p" and not following[3]:
            found += following[1] - start == 64 << 20
    return found


@glibc_only
@pytest.mark.parametrize(("workers", "flags", "one_heap"), [
    ("1", [], True), ("2", [], True), ("1", ["--no-trim-memory"], False)])
def test_every_serving_process_keeps_one_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str,
                                             flags: list[str], one_heap: bool) -> None:
    """After large requests (decoded on decode threads) and batches (on the inference
    thread): the main heap alone, in a lone process (set in it before its models' threads
    start) and in each worker (from the environment they start with). Off, the threads have arenas of their own: what the check counts is there to be found."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)  # the server decides, as a user's would
    body = samples.v2_json(40, MODELS)  # over 256 KiB: parsed on a decode thread (app/offload.py)
    assert len(body) > 256 * 1024
    with ServerProcess(["--model-dir", str(copy_model(tmp_path / "models", "fashion-cnn", 1).parent.parent),
                        "--workers", workers, "--no-warmup", *flags]) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(8):
                answer = client.post("/v2/models/fashion-cnn/infer", content=body,
                                     headers={"Content-Type": "application/json"})
                assert answer.status_code == 200, answer.text
        assert server.process is not None
        serving = server.serving_pids()
        assert len(serving) == int(workers)
        if int(workers) > 1:  # what the load tools read as the server's memory is the workers' too
            assert server.resident_mb() > resident_kb(server.process.pid) / 1024 + 100 * len(serving)
        arenas = {pid: extra_arenas(pid) for pid in serving}
        if one_heap:
            assert all(count == 0 for count in arenas.values()), arenas
        else:
            assert all(count >= 4 for count in arenas.values()), arenas


async def until(check: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Once `check()` is truthy (a bound on waiting, not a measure of speed)."""
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")


async def test_memory_is_returned_once_for_the_asks_in_between_and_not_while_still_held() -> None:
    trims: list[int] = []
    held = [0]
    memory = MemoryReturn(0.05, lambda: trims.append(1), unless=lambda: held[0] > 0)
    for _ in range(5):
        memory.ask()
    await until(lambda: trims)
    await asyncio.sleep(0.2)  # time for any more to show
    assert trims == [1]
    held[0] = 1  # asked, but large bodies are held again by the time it comes: not now
    memory.ask()
    await asyncio.sleep(0.2)
    assert trims == [1]
    held[0] = 0
    memory.ask()
    await until(lambda: len(trims) == 2)


async def test_an_ask_that_comes_due_as_the_process_ends_is_dropped_quietly() -> None:
    """A shutdown unloads every model, and each unload asks; the loop's executor may be shut
    down by the time the ask comes due (asyncio.run's last step)."""
    trims: list[int] = []
    memory = MemoryReturn(0.01, lambda: trims.append(1))
    await asyncio.get_running_loop().shutdown_default_executor()
    memory._return()  # what the timer calls: no RuntimeError for the loop to log
    assert trims == []
