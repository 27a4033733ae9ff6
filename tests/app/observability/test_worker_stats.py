"""Triton's statistics for every worker process: the sum, workers that are gone, and two real
workers answering statistics calls over HTTP and gRPC (and /metrics under Triton's names)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient

from app.batching import BatchRecord
from app.observability.stats import ModelStats
from app.observability.worker_stats import WorkerStats, sum_of
from load_tests.server import ServerProcess
from tests.app.conftest import answered_by_both_workers, wait_for
from tests.app.observability.test_triton_metrics import nv_samples
from tests.conftest import MODELS


def stats_of(*batches: tuple[int, float, int]) -> ModelStats:
    """A model's statistics after batches of (rows, compute seconds, requests), each answered."""
    stats = ModelStats()
    for rows, compute_s, requests in batches:
        stats.record_batch(BatchRecord(rows, [0.001] * requests, compute_s, True, input_s=0.0001, output_s=0.0002))
        for _ in range(requests):
            stats.record_request(compute_s + 0.001, ok=True)
    return stats


def test_every_workers_figures_add_up_for_the_versions_this_worker_serves(tmp_path: Path) -> None:
    mine = stats_of((4, 0.002, 2), (2, 0.001, 1)).as_triton("m", "1")
    theirs = stats_of((4, 0.003, 4), (8, 0.004, 1))
    other = WorkerStats(tmp_path, pid=os.getppid())  # alive, not this process
    other.write([theirs.as_triton("m", "1"), stats_of((16, 0.01, 1)).as_triton("m", "2")])
    here = WorkerStats(tmp_path, pid=os.getpid())
    before = json.dumps(mine)

    summed = here.summed([mine])

    assert json.dumps(mine) == before  # this worker's own figures are not changed by the sum
    assert len(summed) == 1  # version 2 is not served here: not listed
    total = summed[0]
    assert (total["name"], total["version"]) == ("m", "1")
    assert total["inference_count"] == 6 + 12
    assert total["execution_count"] == 2 + 2
    assert total["last_inference"] == max(mine["last_inference"], theirs.last_inference_ms)
    stats = total["inference_stats"]
    assert stats["success"]["count"] == 3 + 5
    assert stats["queue"]["count"] == stats["compute_infer"]["count"] == 3 + 5  # perf_analyzer wants them equal
    assert stats["compute_infer"]["ns"] == mine["inference_stats"]["compute_infer"]["ns"] + theirs.compute_infer.ns
    assert stats["cache_hit"] == stats["cache_miss"] == {"count": 0, "ns": 0}
    by_size = {b["batch_size"]: b["compute_infer"]["count"] for b in total["batch_stats"]}
    assert by_size == {2: 1, 4: 2, 8: 1}  # batches of 4 from both workers, the others from one


def test_a_dead_workers_figures_stay_in_the_sum(tmp_path: Path) -> None:
    here = WorkerStats(tmp_path, pid=os.getpid())
    dead = WorkerStats(tmp_path, pid=999_999_999)
    dead.write([stats_of((4, 0.002, 1)).as_triton("m", "1")])
    mine = [stats_of((1, 0.001, 1)).as_triton("m", "1")]
    for _ in range(2):  # retired on the first call, still counted on the next
        assert here.summed(mine)[0]["inference_count"] == 5
    assert not (tmp_path / "999999999.stats.json").exists()
    assert len(list(tmp_path.glob("retired-999999999-*.stats.json"))) == 1


def test_a_worker_that_exits_leaves_its_figures_behind(tmp_path: Path) -> None:
    here = WorkerStats(tmp_path, pid=os.getpid())
    leaving = WorkerStats(tmp_path, pid=os.getppid())
    leaving.write([stats_of((4, 0.002, 1)).as_triton("m", "1")])
    leaving.retire([stats_of((4, 0.002, 1), (2, 0.001, 1)).as_triton("m", "1")])  # its last figures, as it exits
    assert here.summed([ModelStats().as_triton("m", "1")])[0]["inference_count"] == 6


def test_figures_are_written_again_only_when_they_changed(tmp_path: Path) -> None:
    worker = WorkerStats(tmp_path, pid=os.getpid())
    figures = [stats_of((4, 0.002, 1)).as_triton("m", "1")]
    worker.write(figures)
    worker.published.files.path.write_text("[]")  # were it written again, this would be replaced
    worker.write(figures)
    assert worker.published.files.path.read_text() == "[]"
    figures[0]["inference_count"] += 1
    worker.write(figures)
    assert json.loads(worker.published.files.path.read_text())[0]["inference_count"] == 5


def test_an_unwritable_folder_is_reported_once_and_the_sum_still_answers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "app.observability.snapshots")
    folder = tmp_path / "metrics"
    worker = WorkerStats(folder, pid=os.getpid())
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    figures = [stats_of((4, 0.002, 1)).as_triton("m", "1")]
    for count in range(3):
        figures[0]["inference_count"] = count  # a change each time: each is tried
        worker.write(figures)
    assert caplog.text.count("cannot write this worker's statistics") == 1
    assert worker.summed(figures)[0]["inference_count"] == 2  # its own figures, at least
    folder.unlink()
    worker.write(figures)
    assert json.loads(worker.published.files.path.read_text())[0]["inference_count"] == 2


def test_the_sum_reads_nothing_from_a_file_no_worker_wrote(tmp_path: Path) -> None:
    (tmp_path / f"{os.getppid()}.stats.json").write_text("{not json")
    figures = [stats_of((4, 0.002, 1)).as_triton("m", "1")]
    assert sum_of(figures[0], []) == figures[0]
    assert WorkerStats(tmp_path, pid=os.getpid()).summed(figures) == figures


def test_two_workers_answer_statistics_counting_every_request_over_http_and_grpc() -> None:
    """perf_analyzer reads these at each end of a measurement; from one worker alone they
    counted half the requests its client sent to two."""
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--no-warmup", "--log-level", "info"]) as server:
        answered_by_both_workers(server, 40)

        def counted() -> int:  # on a fresh connection: either worker answers
            found = httpx.get(f"{server.url}/v2/models/fashion-cnn/stats", timeout=30).json()["model_stats"]
            return sum(int(v["inference_count"]) for v in found)

        # every worker writes its figures each STATS_SNAPSHOT_S; on a busy machine, later
        wait_for(lambda: [counted() for _ in range(4)] == [40] * 4)
        over_http = [httpx.get(f"{server.url}/v2/models/fashion-cnn/stats", timeout=30).json()["model_stats"]
                     for _ in range(8)]
        # Triton's metric names for the same figures, from whichever worker answers the scrape
        scraped = [nv_samples(httpx.get(f"{server.url}/metrics", timeout=30).text) for _ in range(8)]
        over_grpc = []
        for _ in range(8):
            client = grpcclient.InferenceServerClient(server.grpc_target)
            try:
                over_grpc.append(client.get_inference_statistics("fashion-cnn", as_json=True)["model_stats"])
            finally:
                client.close()
    assert [sum(int(v["inference_count"]) for v in found) for found in over_http] == [40] * 8
    assert [sum(int(v["inference_count"]) for v in found) for found in over_grpc] == [40] * 8
    assert all(sum(int(v["inference_stats"]["success"]["count"]) for v in found) == 40 for found in over_http)
    assert [sum(v for (family, model, _), v in found.items()
                if (family, model) == ("nv_inference_request_success", "fashion-cnn")) for found in scraped] == [40] * 8
    assert [sum(v for (family, model, _), v in found.items()
                if (family, model) == ("nv_inference_count", "fashion-cnn")) for found in scraped] == [40] * 8
