"""One repository for every worker (app/repository/shared.py), in one process: two or three
repositories share a control folder as the workers of one server do. A worker's pid is how
the others tell it is alive, so each stands in with a pid that is: this process's, its
parent's, and a child kept running for the test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import app.repository.shared as shared
from app.errors import ModelNotFound, ModelNotReady
from app.observability.metrics import Metrics
from app.processes import clear_control_folder
from app.repository import LoadFailed, ModelRepository
from app.repository.shared import SharedRepository
from app.runtime import ort_options
from app.settings import Settings
from tests.app.conftest import copy_model

MODEL = "fashion-cnn"


@pytest.fixture
def third_pid() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


def worker(root: Path, folder: Path, pid: int, workers: int = 2,
           accepting: Callable[[], bool] = lambda: True) -> SharedRepository:
    settings = Settings(model_dir=root, model_control_mode="explicit", load_model=[MODEL], warmup=False)
    repository = ModelRepository(settings, ort_options(None, 1, 1), Metrics())
    return SharedRepository(repository, folder, workers, pid=pid, accepting=accepting)


@asynccontextmanager
async def running(shared_repository: SharedRepository, *, following: bool = True) -> AsyncIterator[SharedRepository]:
    """Started as a worker starts (its own models, then the ledger), and following the
    others' changes as app/main.py has it do every FOLLOW_S."""
    await shared_repository.repository.start()
    await shared_repository.start()

    async def follow() -> None:
        while True:
            await asyncio.sleep(shared.FOLLOW_S)
            await shared_repository.follow()

    task = asyncio.create_task(follow()) if following else None
    try:
        yield shared_repository
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        shared_repository.stop()
        await shared_repository.repository.stop()


def broken_model(version: Path) -> None:
    for model_file in version.glob("*.onnx"):
        model_file.write_bytes(b"not a model")


@pytest.fixture
def one_version(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    copy_model(root, MODEL, 1)
    return root


async def test_a_load_through_one_worker_is_served_by_every_worker_when_the_call_returns(
        one_version: Path, tmp_path: Path) -> None:
    folder = tmp_path / "control"
    async with running(worker(one_version, folder, os.getpid())) as first, \
            running(worker(one_version, folder, os.getppid())) as second:
        copy_model(one_version, MODEL, 2)
        await first.load(MODEL)
        assert first.repository.versions_of(MODEL) == second.repository.versions_of(MODEL) == ["2"]
        await second.unload(MODEL)  # through the other worker, the other way
        assert first.repository.versions_of(MODEL) == second.repository.versions_of(MODEL) == []
        assert first.ready()
        assert second.ready()


async def test_readiness_needs_every_worker_reporting_and_ready(one_version: Path, tmp_path: Path) -> None:
    folder = tmp_path / "control"
    broken = tmp_path / "broken"
    broken_model(copy_model(broken, MODEL, 1))
    async with running(worker(one_version, folder, os.getpid()), following=False) as first:
        assert first.repository.ready
        assert not first.ready()  # the second worker has not reported: still starting
        async with running(worker(broken, folder, os.getppid()), following=False):
            await first.follow()
            assert not first.ready()  # it reports, but its model failed to load
        async with running(worker(one_version, folder, os.getppid()), following=False):
            await first.follow()
            assert first.ready()
        await first.follow()
        assert not first.ready()  # gone (its report removed as it stopped)


async def test_a_worker_counts_as_ready_only_once_it_takes_connections(one_version: Path, tmp_path: Path) -> None:
    """A worker's models are ready a moment before its server listens on its socket; until
    it does, the kernel gives it no connection, and its report does not say ready (a burst
    sent in that moment all went to the other worker: tests/app/test_workers.py)."""
    folder = tmp_path / "control"
    listening = False
    async with running(worker(one_version, folder, os.getpid()), following=False) as first:
        async with running(worker(one_version, folder, os.getppid(), accepting=lambda: listening),
                           following=False) as second:
            assert second.repository.ready
            assert not first.ready()  # its models are ready, its socket not yet listening
            listening = True
            await second.follow()  # its next report, FOLLOW_S later in a running worker
            assert first.ready()
            listening = False  # its server has stopped (closed its socket)
            await second.follow()
            assert not first.ready()


async def test_a_worker_that_says_ready_has_told_the_others(one_version: Path, tmp_path: Path) -> None:
    """A probe answered 200 by one worker and the next by another agree at once, without a
    follow step between: the one that said ready had written so in its report (before, its
    report lagged up to FOLLOW_S behind what it answered, and the next probe got 503)."""
    folder = tmp_path / "control"
    listening = False
    async with running(worker(one_version, folder, os.getpid()), following=False) as first:
        async with running(worker(one_version, folder, os.getppid(), accepting=lambda: listening),
                           following=False) as second:
            assert not second.ready()  # models ready, socket not listening yet: not ready itself either
            listening = True
            assert second.ready()  # no follow step: its report is written as it answers
            assert first.ready()


async def test_readiness_reads_the_reports_as_it_is_asked(one_version: Path, tmp_path: Path) -> None:
    """Not as last followed: every worker answers from the same files, so a probe spread over
    the workers does not get 200 from one and 503 from another that has not looked yet."""
    folder = tmp_path / "control"
    async with running(worker(one_version, folder, os.getpid()), following=False) as first:
        assert not first.ready()
        async with running(worker(one_version, folder, os.getppid()), following=False):
            assert first.ready()  # no follow step between: the new report read as asked
        assert not first.ready()  # its report removed as it stopped


async def test_a_change_that_fails_in_another_worker_names_the_worker_and_why(
        one_version: Path, tmp_path: Path) -> None:
    folder, other = tmp_path / "control", tmp_path / "other"
    copy_model(other, MODEL, 1)
    async with running(worker(one_version, folder, os.getpid())) as first, \
            running(worker(other, folder, os.getppid())) as second:
        copy_model(one_version, MODEL, 2)
        broken_model(copy_model(other, MODEL, 2))
        with pytest.raises(LoadFailed) as failed:
            await first.load(MODEL)
        assert f"worker {os.getppid()}" in failed.value.message
        assert "version 2 failed to load" in failed.value.message
        assert first.repository.versions_of(MODEL) == ["2"]
        assert second.repository.versions_of(MODEL) == ["1"]  # what served before serves on


async def test_the_callers_own_error_keeps_its_status(one_version: Path, tmp_path: Path) -> None:
    async with running(worker(one_version, tmp_path / "control", os.getpid(), workers=1)) as alone:
        with pytest.raises(ModelNotFound):
            await alone.load("no-such-model")
        with pytest.raises(ModelNotFound):
            await alone.unload("no-such-model")


async def test_a_worker_that_starts_later_serves_what_the_api_asked(
        one_version: Path, tmp_path: Path, third_pid: int) -> None:
    """As a worker uvicorn restarts after a crash: its start set is the --load-model list,
    then the ledger (here: the model unloaded, then loaded again with a configuration)."""
    folder = tmp_path / "control"
    async with running(worker(one_version, folder, os.getpid())) as first, \
            running(worker(one_version, folder, os.getppid())):
        await first.unload(MODEL)
        async with running(worker(one_version, folder, third_pid, workers=3)) as late:
            assert late.repository.versions_of(MODEL) == []
            assert late.ready()
        config = '{"max_batch_size": 2, "dynamic_batching": {}}'
        await first.load(MODEL, config)
        async with running(worker(one_version, folder, third_pid, workers=3)) as late:
            assert late.repository.versions_of(MODEL) == ["1"]
            assert late.repository.get(MODEL).batcher.policy.max_batch_size == 2


async def test_a_worker_that_does_not_apply_a_change_in_time_is_named(
        one_version: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "SETTLE_S", 0.3)
    folder = tmp_path / "control"
    async with running(worker(one_version, folder, os.getpid())) as first, \
            running(worker(one_version, folder, os.getppid()), following=False) as stuck:
        with pytest.raises(ModelNotReady) as late:
            await first.unload(MODEL)
        assert f"worker(s) {os.getppid()} had not applied it" in late.value.message
        assert first.repository.versions_of(MODEL) == []
        await stuck.follow()  # when it gets to it, it applies the change
        assert stuck.repository.versions_of(MODEL) == []


def test_a_new_run_starts_with_an_empty_ledger(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    for path in (tmp_path / "changes.json", tmp_path / "changes.lock", tmp_path / "workers" / "123.json"):
        path.write_text("{}")
    clear_control_folder(tmp_path)
    assert list(tmp_path.rglob("*.json")) == []
    assert not (tmp_path / "changes.lock").exists()
