"""The console's slowest recent traces from every worker process: the choice, workers that are
gone, and two real workers answering /console/traces alike."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from app.observability.worker_traces import SHOWN, WorkerTraces
from load_tests.server import ServerProcess
from tests.app.conftest import answered_by_both_workers, wait_for
from tests.conftest import MODELS


def traces(*durations: float, worker: str) -> list[dict[str, object]]:
    return [{"trace_id": f"{worker}-{i}", "name": "POST /v2/models/{name}/infer", "duration_ms": d,
             "ended_at": 0.0, "attributes": {}, "spans": []} for i, d in enumerate(durations)]


def test_the_slowest_of_every_live_worker_are_shown_slowest_first(tmp_path: Path) -> None:
    other = WorkerTraces(tmp_path, pid=os.getppid())  # alive, not this process
    other.write(traces(9.0, 2.0, worker="other"))
    here = WorkerTraces(tmp_path, pid=os.getpid())
    shown = here.slowest(traces(5.0, 1.0, worker="here"), count=3)
    assert [t["trace_id"] for t in shown] == ["other-0", "here-0", "other-1"]


def test_a_dead_workers_traces_are_not_shown(tmp_path: Path) -> None:
    WorkerTraces(tmp_path, pid=999_999_999).write(traces(50.0, worker="dead"))
    here = WorkerTraces(tmp_path, pid=os.getpid())
    assert [t["trace_id"] for t in here.slowest(traces(1.0, worker="here"))] == ["here-0"]


def test_what_no_worker_wrote_is_skipped(tmp_path: Path) -> None:
    (tmp_path / f"{os.getppid()}.traces.json").write_text('[{"trace_id": "x"}, 3, {"duration_ms": "slow"}]')
    here = WorkerTraces(tmp_path, pid=os.getpid())
    assert [t["trace_id"] for t in here.slowest(traces(1.0, worker="here"))] == ["here-0"]


def test_two_workers_show_the_same_slowest_traces_whichever_answers() -> None:
    """Each worker kept its own: the console showed one worker's on each refresh, a different
    set as the connection landed on one or the other."""
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--no-warmup", "--tracing",
                        "--log-level", "info"]) as server:
        answered_by_both_workers(server, 40)

        def shown() -> tuple[str, ...]:  # on a fresh connection: either worker answers
            found = httpx.get(f"{server.url}/console/traces", timeout=30).json()["traces"]
            return tuple(t["trace_id"] for t in found)

        # every worker writes its slowest each second; on a busy machine, later
        def alike() -> tuple[str, ...] | None:
            seen = {shown() for _ in range(6)}
            return seen.pop() if len(seen) == 1 else None

        assert len(wait_for(alike)) == SHOWN
