"""Triton's system shared memory against a real `python -m app --shared-memory` of two
workers, through Triton's own clients: tritonclient's shared-memory utilities over HTTP and
gRPC, and perf_analyzer's `--shared-memory system`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm

from load_tests import perf_analyzer, perf_inputs
from load_tests.server import ServerProcess
from tests.app.conftest import answered_by_both_workers
from tests.app.grpc.test_grpc_clients import pixels
from tests.conftest import MODELS

pytestmark = pytest.mark.server
CLIENTS = {"http": triton_http, "grpc": triton_grpc}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--shared-memory", "--log-level", "info"]) as running:
        answered_by_both_workers(running, 2)  # both workers serve before the regions are registered
        yield running


def client_of(server: ServerProcess, protocol: str):  # type: ignore[no-untyped-def]
    target = f"127.0.0.1:{server.port}" if protocol == "http" else server.grpc_target
    return CLIENTS[protocol].InferenceServerClient(target)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_sends_and_takes_tensors_through_shared_memory(server: ServerProcess, protocol: str) -> None:
    """Regions registered through one connection (one worker) serve requests on fresh
    connections, which the kernel spreads over both workers; unregistered, none does."""
    module, images = CLIENTS[protocol], pixels(4, seed=11)
    logits_bytes = 4 * 10 * 4
    tag = uuid.uuid4().hex[:8]
    inputs = shm.create_shared_memory_region(f"in-{tag}", f"/ortserve-in-{tag}", images.nbytes)
    outputs = shm.create_shared_memory_region(f"out-{tag}", f"/ortserve-out-{tag}", logits_bytes)
    try:
        shm.set_shared_memory_region(inputs, [images])
        registering = client_of(server, protocol)
        registering.register_system_shared_memory(f"in-{tag}", f"/ortserve-in-{tag}", images.nbytes)
        registering.register_system_shared_memory(f"out-{tag}", f"/ortserve-out-{tag}", logits_bytes)
        status = registering.get_system_shared_memory_status()
        names = {r["name"] for r in status} if protocol == "http" else set(status.regions)
        assert {f"in-{tag}", f"out-{tag}"} <= names

        plain = module.InferInput("pixels", list(images.shape), "FP32")
        plain.set_data_from_numpy(images)
        expected = client_of(server, protocol).infer("fashion-cnn", [plain]).as_numpy("logits")
        for _ in range(8):
            shm.set_shared_memory_region(outputs, [np.zeros((4, 10), np.float32)])
            given = module.InferInput("pixels", list(images.shape), "FP32")
            given.set_shared_memory(f"in-{tag}", images.nbytes)
            asked = module.InferRequestedOutput("logits")
            asked.set_shared_memory(f"out-{tag}", logits_bytes)
            answer = client_of(server, protocol).infer("fashion-cnn", [given], outputs=[asked])  # a new connection
            entry = answer.get_output("logits")
            shape = entry["shape"] if protocol == "http" else list(entry.shape)
            assert shape == [4, 10]
            np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs, np.float32, [4, 10]), expected)

        registering.unregister_system_shared_memory(f"in-{tag}")
        given = module.InferInput("pixels", list(images.shape), "FP32")
        given.set_shared_memory(f"in-{tag}", images.nbytes)
        for _ in range(4):
            with pytest.raises(Exception, match=f"no shared memory region 'in-{tag}' is registered"):
                client_of(server, protocol).infer("fashion-cnn", [given])
        registering.unregister_system_shared_memory(f"out-{tag}")
    finally:
        shm.destroy_shared_memory_region(inputs)
        shm.destroy_shared_memory_region(outputs)


@pytest.fixture(scope="module")
def perf_server() -> Iterator[ServerProcess]:
    tool = perf_analyzer.find()
    objects = perf_analyzer.shared_memory_folder(tool) if tool else "/dev/shm"
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--shared-memory",
                        "--shared-memory-dir", str(objects)]) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_with_system_shared_memory(perf_server: ServerProcess, protocol: str,
                                                      perf_analyzer_tool: str) -> None:
    """Triton's load tester, unchanged: it registers its regions, sends every request's
    tensors through them, reads the outputs back, and unregisters at the end."""
    perf_analyzer.install_cuda_runtime(perf_analyzer_tool)
    folder, seen_as = perf_analyzer.input_folder(perf_analyzer_tool)
    folder.mkdir(parents=True, exist_ok=True)
    files = perf_inputs.write(MODELS, folder, 8)
    for model in ("fashion-cnn", "sst2-lstm"):
        before = _inferences(perf_server, model)
        done = perf_analyzer.run(perf_analyzer_tool, model, perf_server, protocol, 4, *perf_analyzer.QUICK_CHECK,
                                 "--shared-memory", "system", "--output-shared-memory-size", "4096",
                                 "--input-data", f"{seen_as}/{files[model].name}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert perf_analyzer.figures(done.stdout)["infer_per_s"] > 0, done.stdout
        assert _inferences(perf_server, model) > before  # the server counted them
    status = triton_http.InferenceServerClient(f"127.0.0.1:{perf_server.port}").get_system_shared_memory_status()
    assert status == []  # perf_analyzer unregistered what it registered


def _inferences(server: ServerProcess, model: str) -> int:
    stats = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}").get_inference_statistics(model)
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def test_regions_that_come_and_go_under_load_never_fail_the_server(server: ServerProcess) -> None:
    """One client unregisters and registers again the region another client's requests read,
    over and over, through both workers: every request is answered, 200 or the 400 that says
    the region is not registered, and the server serves on."""
    import threading

    import httpx

    images = pixels(2, seed=5)
    tag = uuid.uuid4().hex[:8]
    region = shm.create_shared_memory_region(f"churn-{tag}", f"/ortserve-churn-{tag}", images.nbytes)
    shm.set_shared_memory_region(region, [images])
    body = {"inputs": [{"name": "pixels", "shape": [2, 1, 28, 28], "datatype": "FP32", "parameters": {
        "shared_memory_region": f"churn-{tag}", "shared_memory_byte_size": images.nbytes}}]}
    register = {"key": f"/ortserve-churn-{tag}", "byte_size": images.nbytes}
    statuses: list[int] = []
    refusals: set[str] = set()
    stop = threading.Event()

    def infer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                answered = client.post("/v2/models/fashion-cnn/infer", json=body)
                statuses.append(answered.status_code)
                if answered.status_code != 200:
                    refusals.add(answered.text)

    workers = [threading.Thread(target=infer) for _ in range(4)]
    try:
        for thread in workers:
            thread.start()
        for _ in range(40):  # a fresh connection each time: through either worker
            assert httpx.post(f"{server.url}/v2/systemsharedmemory/region/churn-{tag}/register",
                              json=register).status_code == 200
            assert httpx.post(f"{server.url}/v2/systemsharedmemory/region/churn-{tag}/unregister").status_code == 200
    finally:
        stop.set()
        for thread in workers:
            thread.join(timeout=60)
        shm.destroy_shared_memory_region(region)
    assert set(statuses) <= {200, 400}
    assert refusals <= {f'{{"error":"input \'pixels\': no shared memory region \'churn-{tag}\' is registered"}}'}
    assert len(statuses) > 40
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
