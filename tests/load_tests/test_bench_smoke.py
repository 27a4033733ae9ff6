"""A few seconds of real load against a real server: the runner works end to end and
counts errors. Not a speed test: nothing here asserts a rate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from load_tests import bench, samples, wrk
from load_tests.client import Payload, closed_loop, open_loop
from load_tests.server import ServerProcess
from load_tests.stats import summarize
from tests.conftest import MODELS

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    with ServerProcess(["--model-dir", str(MODELS)]) as running:
        yield running


def test_closed_loop_counts_successes_and_errors(server: ServerProcess) -> None:
    good = Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), bench.JSON)
    bad = Payload("/v1/models/sst2-lstm:predict", b'{"instances": []}', bench.JSON)
    ok_samples, seconds = asyncio.run(closed_loop(server.url, good, 4, 1.0, warmup_s=0.2))
    bad_samples, _ = asyncio.run(closed_loop(server.url, bad, 2, 0.5, warmup_s=0.0))
    ok = summarize(ok_samples, seconds)
    errors = summarize(bad_samples, 0.5)
    assert ok.ok == ok.requests > 0
    assert not ok.errors
    assert ok.p50_ms > 0
    assert ok.p99_ms >= ok.p50_ms
    assert errors.ok == 0
    assert errors.errors == {"400": errors.requests}


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (.ci/run installs it)")
def test_wrk_closed_loop_counts_successes_and_errors(server: ServerProcess) -> None:
    good = Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), bench.JSON)
    bad = Payload("/v1/models/sst2-lstm:predict", b'{"instances": []}', bench.JSON)
    ok, cpu = wrk.closed_loop(server.url, good, 4, 1.0, warmup_s=0)
    errors, _ = wrk.closed_loop(server.url, bad, 2, 1.0, warmup_s=0)
    assert ok.ok == ok.requests > 0
    assert not ok.errors
    assert cpu > 0
    assert errors.ok == 0
    assert errors.errors == {"non-2xx": errors.requests}


def test_a_wrk_report_becomes_its_summary() -> None:
    """The fields of wrk's report (our Lua script's WRK_SUMMARY line) land where they belong:
    microseconds as milliseconds, errors by kind, a request both non-2xx and a read error
    counted as a failure once per kind (successes low rather than high)."""
    report = {"requests": 1000, "duration_us": 2_000_000, "non_2xx": 3, "connect": 0, "read": 2, "write": 0,
              "timeout": 1, "p50_us": 2500, "p90_us": 4000, "p99_us": 9000, "max_us": 12000}
    summary = wrk.summary_of(report, items_per_request=8)
    assert (summary.requests, summary.ok) == (1000, 994)
    assert summary.errors == {"read": 2, "timeout": 1, "non-2xx": 3}
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.max_ms) == (2.5, 4.0, 9.0, 12.0)
    assert (summary.duration_s, summary.items_per_request) == (2.0, 8)


def test_open_loop_sends_at_the_offered_rate(server: ServerProcess) -> None:
    payload = Payload("/v1/models/fashion-cnn:predict", samples.v1_images(MODELS, 1), bench.JSON)
    got, seconds = asyncio.run(open_loop(server.url, payload, rate_per_s=40, duration_s=1.0))
    summary = summarize(got, seconds)
    assert summary.requests == 40
    assert summary.ok == 40


def test_runner_scenario_reads_server_batch_figures() -> None:
    scenario = bench.Scenario("smoke", ["--max-queue-delay-ms", "5"], bench.cnn_v1, [4], "fashion-cnn")
    (row,) = bench.run_scenario(scenario, MODELS, duration_s=1.0, client="aiohttp")
    assert row.summary["ok"] > 0
    assert row.mean_batch_size is not None
    assert row.mean_batch_size >= 1
    assert row.server_cpu_s > 0


def test_pairing_alternates_rounds_and_takes_medians() -> None:
    ceiling = bench.Scenario("ceiling-v1", [], bench.cnn_v1, [4], asgi=bench.CEILING)
    cnn = bench.Scenario("v1-fashion-cnn", [], bench.cnn_v1, [4], "fashion-cnn")
    paired = bench.run_pairing(bench.Pairing("cnn / ceiling", cnn, ceiling, 4), MODELS, 1.0, 3, "aiohttp")
    assert len(paired["rounds"]) == 3
    for r in paired["rounds"]:
        assert r["numerator"]["ok"] > 0
        assert r["denominator"]["ok"] > 0
        assert r["requests_ratio"] > 0
    ratios = sorted(r["requests_ratio"] for r in paired["rounds"])
    assert paired["median_requests_ratio"] == ratios[1]
    assert "cnn / ceiling" in bench.markdown([], [], [], [paired])


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (.ci/run installs it)")
def test_versions_compares_two_checkouts_round_by_round(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from load_tests import versions
    from tests.conftest import ROOT

    logs: list[str] = []

    class Recorded(ServerProcess):  # each server's log, read as it stops
        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)  # type: ignore[arg-type]
            logs.append(self.log.read_text())

    monkeypatch.setattr(versions, "ServerProcess", Recorded)
    assert versions.main(["--base", str(ROOT), "--model-dir", str(MODELS), "--rounds", "1",
                          "--duration", "0.5", "--concurrency", "4", "--server-flag=--access-log"]) == 0
    table = capsys.readouterr().out.split("\n\n")[-1]
    rows = [line for line in table.splitlines() if line.startswith("| v1-")]
    assert [row.split(" | ")[0] for row in rows] == ["| v1-fashion-cnn c4", "| v1-sst2-lstm c4"]
    for row in rows:
        ratio = float(row.split(" | ")[2])
        assert 0 < ratio < 100  # both servers answered (same code: the ratio is noise around 1)
    assert len(logs) == 2
    assert all("ortserve.access: method=POST route=/v1/models/{name}:predict status=200" in log for log in logs)


def test_the_naive_server_answers_the_same_body_with_the_same_labels(server: ServerProcess) -> None:
    import httpx

    body = samples.v1_images(MODELS, 8)
    with ServerProcess([], asgi=bench.NAIVE, env={"NAIVE_MODEL_DIR": str(MODELS)}) as naive:
        theirs = httpx.post(f"{naive.url}/v1/models/fashion-cnn:predict", content=body, timeout=10).json()
    ours = httpx.post(f"{server.url}/v1/models/fashion-cnn:predict", content=body, timeout=10).json()
    assert [p["index"] for p in theirs["predictions"]] == [p["index"] for p in ours["predictions"]]
    assert theirs["model_version"] == ours["model_version"]


def test_the_runner_lists_its_scenarios_and_refuses_unknown_ones(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as help_exit:
        bench.main(["--help"])
    assert help_exit.value.code == 0
    listed = " ".join(capsys.readouterr().out.split())
    for scenario in bench.scenarios():
        assert scenario.name in listed.replace("- ", "-")  # argparse may wrap a name at its hyphen
    with pytest.raises(SystemExit) as unknown:
        bench.main(["--only", "nosuch"])
    assert unknown.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_scenario_names_say_protocol_and_model() -> None:
    for scenario in bench.scenarios():
        if scenario.model:
            assert scenario.name.startswith(("v1-", "v2-")), scenario.name
            assert scenario.model in scenario.name, scenario.name


def test_the_gpu_scripts_client_spreads_the_load_over_processes(server: ServerProcess) -> None:
    from load_tests import gpu

    payload = Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), bench.JSON)
    summary = gpu.load(server.url, payload, concurrency=3, duration_s=0.5, processes=2)
    assert summary.ok == summary.requests > 0
    assert not summary.errors
    assert summary.duration_s == 0.5  # each process measured the same window; samples summed


def test_the_benchmark_runs_on_the_serving_install_without_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving install has no matplotlib: plots are skipped, not a crash at the end."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert bench.plots([], tmp_path) is False
    assert list(tmp_path.iterdir()) == []


async def test_the_v2_ceiling_parses_the_services_v2_body_and_answers_as_large() -> None:
    """The V2 JSON ceiling reads the same body the v2-json scenario sends the service."""
    import httpx

    from load_tests import ceiling

    body = bench.v2_json_1(MODELS).body
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ceiling.app), base_url="http://t") as client:
        answered = await client.post("/v2/models/fashion-cnn/infer", content=body)
        empty = await client.post("/v2/models/fashion-cnn/infer", content=b'{"inputs": []}')
    assert answered.status_code == 200
    assert answered.json()["outputs"][0]["shape"] == [1, 10]
    assert empty.status_code == 400


def test_the_triton_scenarios_are_left_out_without_pytriton(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """PyTriton lives in a venv of its own (make triton-peer): without it the runner says so
    and measures the rest, here nothing but raw ONNX Runtime."""
    assert bench.main(["--quick", "--rounds", "0", "--only", "triton-v2-json", "--out", str(tmp_path),
                       "--triton-python", str(tmp_path / "no-such-python"), "--client", "aiohttp"]) == 0
    out = capsys.readouterr().out
    assert "triton-* scenarios left out: no PyTriton interpreter" in out
    assert "triton-v2-json" not in (tmp_path / "results.md").read_text()
    triton = next(s for s in bench.scenarios(tmp_path / "python") if s.name == "triton-v2-json")
    assert triton.peer
    assert triton.command is not None
    assert triton.command[:2] == [str(tmp_path / "python"), str(bench.ROOT / "load_tests" / "triton_peer.py")]


def test_asgi_cost_sends_the_v2_body_to_both_apps() -> None:
    from load_tests import asgi_cost

    figures = asyncio.run(asgi_cost.measure(MODELS, requests=20, images=1, profile=False))
    assert set(figures) == {"ceiling", "service"}
    assert all(us > 0 for us in figures.values())


@pytest.mark.parametrize("installed", [True, False])
def test_without_wrk_the_runner_warns_that_its_figures_come_out_low(monkeypatch: pytest.MonkeyPatch, capsys,  # type: ignore[no-untyped-def]
                                                                   installed: bool) -> None:
    class Stop(Exception):
        pass

    listed = bench.scenarios

    def stop(*chosen_for: object) -> list[bench.Scenario]:
        if chosen_for:  # choosing the run's scenarios: the client was chosen and said before
            raise Stop
        return listed()  # the names --only offers

    monkeypatch.setattr(bench.wrk, "available", lambda: installed)
    monkeypatch.setattr(bench, "scenarios", stop)
    with pytest.raises(Stop):
        bench.main(["--quick"])
    said = capsys.readouterr()
    assert f"closed-loop client: {'wrk' if installed else 'aiohttp'}" in said.out
    assert ("wrk is not installed" in said.err) is not installed


def test_the_grpc_ceiling_answers_as_large_as_the_service_and_with_its_facts(server: ServerProcess) -> None:
    """load_tests/grpc_ceiling.py copies the model's facts from the running service and
    answers every request with the service's output, in name, type and shape (no values)."""
    import queue

    import numpy as np
    import tritonclient.grpc as triton

    from load_tests import protocols

    pixels = np.zeros((3, 1, 28, 28), np.float32)
    with protocols.grpc_ceiling(server) as bare:
        service, ceiling = (triton.InferenceServerClient(s.grpc_target) for s in (server, bare))
        for call in ("get_server_metadata", "get_model_config"):
            args = () if call == "get_server_metadata" else ("fashion-cnn",)
            assert getattr(ceiling, call)(*args) == getattr(service, call)(*args)
        assert ceiling.get_model_metadata("fashion-cnn") == service.get_model_metadata("fashion-cnn")

        request = triton.InferInput("pixels", list(pixels.shape), "FP32")
        request.set_data_from_numpy(pixels)
        want = service.infer("fashion-cnn", [request]).as_numpy("logits")
        got = ceiling.infer("fashion-cnn", [request]).as_numpy("logits")
        assert got.shape == want.shape == (3, 10)
        assert got.dtype == want.dtype

        answers: queue.Queue[object] = queue.Queue()
        ceiling.start_stream(callback=lambda result, error: answers.put(error or result))
        ceiling.async_stream_infer("fashion-cnn", [request], request_id="seven")
        streamed = answers.get(timeout=30)
        ceiling.stop_stream()
        assert isinstance(streamed, triton.InferResult)
        assert streamed.get_response().id == "seven"
        assert streamed.as_numpy("logits").shape == (3, 10)
        # perf_analyzer reads the statistics around each window: they count what was answered
        stats = ceiling.get_inference_statistics("fashion-cnn").model_stats[0]
        assert stats.inference_count >= 6


def test_the_protocols_report_puts_each_transport_and_ceiling_beside_http() -> None:
    from load_tests import protocols

    def figures(rate: float, server_us: float) -> dict[str, float]:
        return {"infer_per_s": rate, "p50_ms": 1.0, "p99_ms": 2.0, "server_us_per_request": server_us,
                "client_us_per_request": 100.0}

    row = {"images": 1, "concurrency": 64, "rounds": 1, "http": figures(5000, 200), "grpc": figures(2000, 600),
           "grpc-stream": figures(4500, 280), "grpc-ceiling": figures(4400, 245),
           "grpc-stream-ceiling": figures(9000, 95)}
    for name in ("grpc", "grpc-stream", *protocols.CEILINGS):
        row[f"{name}_over_http"] = [row[name]["infer_per_s"] / 5000]
        row[f"{name}_median_ratio"] = row[name]["infer_per_s"] / 5000
    row["http"] |= {f"{protocols.THREAD_KEY}loop": 120.0, f"{protocols.THREAD_KEY}infer-fashion-c": 50.0}
    row["grpc-stream"] |= {f"{protocols.THREAD_KEY}loop": 170.0, f"{protocols.THREAD_KEY}event_engine": 30.0,
                           f"{protocols.THREAD_KEY}grpc_global_tim": 0.1}  # too little to show
    report = protocols.markdown([row])
    assert "| 1 | 64 | 5,000 | 4,400 | 0.88 | **0.88** | 9,000 | 1.80 | **1.80** |" in report
    assert "| 1 | 64 | 200 / 100 | 600 / 100 | 280 / 100 | 245 / 100 | 95 / 100 |" in report
    # by thread: a column per group any transport used, 0 where one did not
    assert "| images/request | conc | transport | event_engine | infer-fashion-c | loop |" in report
    assert "| 1 | 64 | http | 0 | 50 | 120 |" in report
    assert "| 1 | 64 | grpc-stream | 30 | 0 | 170 |" in report
    del row["grpc-ceiling"], row["grpc-stream-ceiling"]
    assert "ceiling" not in protocols.markdown([row])
    assert "shared memory" not in protocols.markdown([row])
    row |= {"http-shm": figures(6000, 180), "grpc-shm": figures(2500, 500)}
    for name in protocols.SHARED_MEMORY:
        row[f"{name}_over_http"] = [row[name]["infer_per_s"] / 5000]
        row[f"{name}_median_ratio"] = row[name]["infer_per_s"] / 5000
    report = protocols.markdown([row])
    assert "| 1 | 64 | 5,000 | 6,000 | 1.20 | **1.20** | 2,500 | 0.50 | **0.50** |" in report
    assert "| 1 | 64 | 200 / 100 | 600 / 100 | 280 / 100 | 180 / 100 | 500 / 100 |" in report


def test_the_servers_cpu_by_thread_tells_the_event_loops_from_the_inference_threads(server: ServerProcess) -> None:
    """ServerProcess.cpu_by_thread: the workers' event loops, the model's inference threads
    (named by app/tuning.py), the supervising parent and the helpers, apart."""
    body, headers = samples.v2_binary(32, MODELS)  # a full batch: run on an inference thread, never inline
    before = server.cpu_by_thread()
    with httpx.Client(timeout=30) as client:
        for _ in range(100):
            assert client.post(f"{server.url}/v2/models/fashion-cnn/infer", content=body,
                               headers=headers).status_code == 200
    after = server.cpu_by_thread()
    used = {group: seconds - before.get(group, 0.0) for group, seconds in after.items()}
    assert used["loop"] > 0
    assert used["infer-fashion-c"] > 0  # "infer-fashion-cnn_0" and its siblings, cut to the system's 15 bytes
    assert ("supervisor" in after) == bool(server.worker_pids())
    # every process's threads are counted: at least what /proc says of the server and its workers
    assert sum(after.values()) >= server.cpu_seconds() - 0.05


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (.ci/run installs it)")
def test_the_worker_crash_tool_kills_a_worker_under_load_with_each_listening(capsys: pytest.CaptureFixture[str]) -> None:
    from load_tests import worker_crash

    assert worker_crash.main(["--rounds", "1", "--duration", "2"]) == 0
    out = capsys.readouterr().out
    assert "net.ipv4.tcp_migrate_req = " in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| socket") or line.startswith("| one")]
    assert [row[0] for row in rows] == ["| socket per worker", "| one shared socket"]
    for row in rows:
        assert int(row[1].replace(",", "")) > 0  # wrk was answered, before and after the kill
        assert row[2].split(" ")[0].isdigit()  # what failed, counted


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (.ci/run installs it)")
def test_the_response_cache_benchmark_measures_the_cases_it_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Every input new in `misses`, all but the pool's first in `hits`: checked by the cached
    server's own statistics, which the table reports (a first draft's inputs collided in FP32)."""
    from load_tests import response_cache

    assert response_cache.main(["--rounds", "1", "--duration", "1", "--pool", "4", "--concurrency", "4"]) == 0
    table = capsys.readouterr().out
    assert "| misses | 0%-0% |" in table
    assert "| hits | 100%-100% |" in table  # the pool's inputs were kept by the warm-up
