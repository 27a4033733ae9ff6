"""A real `python -m app` on a loopback port: Triton's own client, and a graceful SIGTERM."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from app.preprocess import normalize_pixels
from load_tests.server import ServerProcess
from tests.app.conftest import reference_session, sample_images
from tests.conftest import MODELS, model_folder

pytestmark = pytest.mark.server


def test_tritonclient_health_metadata_and_config(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fashion-cnn")
    assert client.is_model_ready("sst2-lstm", model_folder("sst2-lstm").name)
    assert not client.is_model_ready("missing")
    meta = client.get_model_metadata("sst2-lstm")
    assert [i["name"] for i in meta["inputs"]] == ["token_ids", "lengths"]
    config = client.get_model_config("fashion-cnn")
    assert config["max_batch_size"] > 0
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert "fashion-cnn" in {s["name"] for s in client.get_inference_statistics()["model_stats"]}


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_matches_onnx_runtime(server: ServerProcess, binary: bool) -> None:
    session, manifest = reference_session("fashion-cnn")
    pixels = normalize_pixels(sample_images(4, seed=7), manifest.preprocessing)  # type: ignore[arg-type]
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    output = triton.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("fashion-cnn", [tensor], outputs=[output], request_id="r1")
    (expected,) = session.run(None, {"pixels": pixels})
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "r1"


def test_tritonclient_sees_errors_as_exceptions(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensor = triton.InferInput("pixels", [1, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(triton.InferenceServerException, match="must have shape"):
        client.infer("fashion-cnn", [tensor])


def test_sigterm_drains_in_flight_requests() -> None:
    """Requests accepted before SIGTERM all get answers; the process then exits cleanly."""
    # Batches wait 2 s for company (even when idle), so the requests sit queued when the signal comes.
    args = ["--model-dir", str(MODELS), "--max-queue-delay-ms", "2000", "--max-batch-size", "256",
            "--no-idle-dispatch", "--log-level", "info"]
    body = {"instances": sample_images(1).tolist()}
    with ServerProcess(args) as running, ThreadPoolExecutor(16) as pool:
        assert running.process is not None

        def one(_: int) -> int:
            url = f"{running.url}/v1/models/fashion-cnn:predict"
            return httpx.post(url, json=body, timeout=30).status_code

        futures = [pool.submit(one, i) for i in range(16)]
        wait_queued(running, "fashion-cnn", 16)  # all accepted, none answered yet
        running.process.send_signal(signal.SIGTERM)
        codes = [f.result() for f in futures]
        assert running.process.wait(30) == 0, running.log.read_text()  # a drained server exits 0
    assert "Application shutdown complete" in running.log.read_text()
    assert codes == [200] * 16, (codes, running.log.read_text())


def wait_queued(server: ServerProcess, model: str, rows: int, timeout_s: float = 20) -> None:
    line = f'ortserve_queue_depth{{model="{model}"}} {float(rows)}'
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in server.metrics():
            return
        time.sleep(0.01)
    raise TimeoutError(f"{rows} rows never queued")
