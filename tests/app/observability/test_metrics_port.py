"""The metrics port (`--metrics-port`, Triton's 8002): GET /metrics there as on the HTTP
port, nothing else, in each way the server listens (one process, a socket per worker, one
shared socket), and a clean exit on SIGTERM."""

from __future__ import annotations

import signal

import httpx
import pytest

from load_tests.server import ServerProcess, free_port
from tests.app.test_cli import run_app
from tests.conftest import MODELS

pytestmark = pytest.mark.server


@pytest.mark.parametrize("listening", [[], ["--workers", "2"], ["--workers", "2", "--no-reuse-port"]],
                         ids=["one process", "a socket per worker", "one shared socket"])
def test_the_metrics_port_answers_metrics_and_nothing_else(listening: list[str]) -> None:
    port = free_port()
    with ServerProcess(["--model-dir", str(MODELS), "--metrics-port", str(port), *listening]) as server:
        httpx.post(f"{server.url}/v2/models/fashion-cnn/infer", json={"inputs": [
            {"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]})
        scraped = [httpx.get(f"http://127.0.0.1:{port}/metrics") for _ in range(6)]  # each a new connection
        api = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        inference = httpx.post(f"http://127.0.0.1:{port}/v2/models/fashion-cnn/infer", json={})
        assert httpx.get(f"{server.url}/metrics").status_code == 200  # the HTTP port's stays
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    assert {r.status_code for r in scraped} == {200}
    assert all('nv_inference_request_success{model="fashion-cnn"' in r.text for r in scraped)
    assert all("ortserve_requests_total" in r.text for r in scraped)
    assert api.status_code == inference.status_code == 404
    assert api.json()["error"] == f"port {port} serves GET /metrics only; the API is on port {server.port}"


def test_a_metrics_port_that_is_another_port_of_the_server_is_refused_at_start() -> None:
    refused = run_app("--metrics-port", "8000", "--port", "8000")
    assert refused.returncode != 0
    assert "the metrics port 8000 is the HTTP or gRPC port" in refused.stderr
