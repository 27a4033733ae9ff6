"""Fixtures for the service: the committed models, an in-process client, a real server."""

from __future__ import annotations

import base64
import gc
import io
import json
import re
import shutil
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from app.batching import BatchPolicy
from app.batching.policy import GROUPING_WINDOW, NO_BOUNDS
from app.main import create_app
from app.manifest import load_manifest
from app.protocol.v2 import ErrorResponse, InferenceResponse, MetadataModelResponse, MetadataServerResponse
from app.runtime import session_options
from app.settings import Settings
from load_tests import samples
from load_tests.server import ServerProcess, free_port
from tests.conftest import MODELS, model_folder

# Every V2 answer is checked against the protocol type it claims to be (strictly: no
# field the type does not declare); errors against ErrorResponse, on every route.
V2_TYPES: list[tuple[re.Pattern[str], type[BaseModel]]] = [
    (re.compile(r"/v2"), MetadataServerResponse),
    (re.compile(r"/v2/models/(?!stats$)[^/]+(/versions/[^/]+)?"), MetadataModelResponse),
    (re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer"), InferenceResponse),
]


async def check_protocol_types(response: httpx.Response) -> None:
    await response.aread()
    if response.request.method == "OPTIONS":  # a browser's preflight (CORS), answered as Starlette does
        return
    path = response.request.url.path
    if response.status_code >= 400 and response.content:
        ErrorResponse.model_validate_json(response.content)
        return
    if response.status_code != 200:
        return
    for pattern, kind in V2_TYPES:
        if pattern.fullmatch(path):
            header_length = response.headers.get("inference-header-content-length")
            body = response.content[: int(header_length)] if header_length else response.content
            kind.model_validate_json(body)


@asynccontextmanager
async def serving(app_changes: Callable[[FastAPI], None] | None = None,
                  **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app under its lifespan, reached in-process through httpx's ASGI transport;
    `app_changes` is applied to the app first, as a user extending it would."""
    settings = Settings(**({"model_dir": MODELS} | overrides))
    app = create_app(settings)
    if app_changes is not None:
        app_changes(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     event_hooks={"response": [check_protocol_types]}) as client:
            yield client


def reference_session(name: str, variant: str | None = None) -> tuple[ort.InferenceSession, Any]:
    """A plain ORT session on the file the service serves, with the service's session options
    (graph optimisations change int8 rounding slightly), to compare answers with."""
    folder = model_folder(name)
    manifest = load_manifest(folder)
    variant = variant or manifest.preferred_variant.get("cpu", "int8")  # what the service picks
    return ort.InferenceSession(str(folder / manifest.variants[variant].file), session_options(1),
                                providers=["CPUExecutionProvider"]), manifest


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def b64_png(pixels: np.ndarray, mode: str = "L") -> str:
    return base64.b64encode(png_bytes(pixels, mode)).decode()


def sample_images(n: int, seed: int = 0) -> np.ndarray:
    """Images with the structure of clothing: a bright blob on a dark background."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(2, 10, size=2)
        h, w = rng.integers(10, 18, size=2)
        images[i, top : top + h, left : left + w] = rng.integers(80, 255)
    return images


def wait_for(check, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    """What `check()` returns once it is truthy; a failure after `timeout_s` (a bound on
    waiting for a server's state, not a measure of its speed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not so after {timeout_s} s")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """`python -m app` on a free loopback port, as a user would start it."""
    with ServerProcess(["--model-dir", str(MODELS)]) as running:
        yield running


def batch_policy(**overrides: Any) -> BatchPolicy:
    """A policy for batcher tests: no waiting for company, one batch in flight."""
    values: dict[str, Any] = {"max_batch_size": 4, "max_queue_delay_s": 0.0, "max_inflight_batches": 1,
                              "inference_threads": 1, "max_queue_size": 4096, "max_queue_bytes": 1 << 30, "retry_after_s": 1,
                              "queue_bounds": NO_BOUNDS,
                              "priority_levels": 0, "default_priority_level": 0, "level_queues": (),
                              "inference_niceness": 0, "idle_dispatch": True, "inline_rows": 0,
                              "max_large_batch_size": 0, "grouping_window": GROUPING_WINDOW}
    return BatchPolicy(**(values | overrides))


def copy_model(root: Path, name: str, version: int, source: Path | None = None) -> Path:
    """A committed model version copied into `root/name/version/` (its manifest says so)."""
    source = source or model_folder(name)
    target = root / name / str(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """A model folder of its own: both shipped models, copied."""
    root = tmp_path / "models"
    for name in ("fashion-cnn", "sst2-lstm"):
        copy_model(root, name, int(model_folder(name).name))
    return root


def grpc_image_request(model: str = "fashion-cnn") -> Any:
    """A ModelInferRequest of one grey 28x28 image, as fashion-cnn's pixels input takes it."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    pixels = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
    pixels.contents.fp32_contents.extend([0.5] * 784)
    return request


@asynccontextmanager
async def serving_grpc(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any, FastAPI]]:
    """`serving` with its gRPC service on a free loopback port: (HTTP client, a
    GRPCInferenceService stub on a grpc.aio channel, the app)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    port, apps = free_port(), []
    async with serving(apps.append, grpc_port=port, **overrides) as client:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield client, service_pb2_grpc.GRPCInferenceServiceStub(channel), apps[0]


def answered_by_both_workers(server: ServerProcess, requests: int) -> None:
    """`requests` V2 JSON single images, each on a connection of its own, sent once both of a
    two-worker server's workers serve: the kernel spreads them over the two."""
    # ready means one worker is; both must serve for the requests to spread
    wait_for(lambda: server.log.read_text().count("gRPC (KServe V2, health, reflection) on") == 2)
    body = samples.v2_json(1, MODELS)
    for _ in range(requests):
        answered = httpx.post(f"{server.url}/v2/models/fashion-cnn/infer", content=body,
                              headers={"content-type": "application/json"}, timeout=30)
        assert answered.status_code == 200, answered.text


class Left:
    """Bytes of Python's allocations made in a `left_behind` block and still held at its end."""

    bytes = 0


@contextmanager
def left_behind() -> Iterator[Left]:
    """What reference counting alone did not free of what the block allocated: the cyclic
    garbage collector is off inside it, so that a request kept in a reference cycle (which
    the collector would free only some time later) counts as left. Where the client runs in
    the serving task (httpx's ASGI transport), end the block a loop step after the last
    answer (`await asyncio.sleep(0)`): the step that answer woke holds its future until it
    ends, and a refusal's future holds the request through its traceback."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    left, before = Left(), tracemalloc.get_traced_memory()[0]
    try:
        yield left
        left.bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Debian's chromium (.ci/run installs it; elsewhere: apt-get install chromium)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless chromium driven by Playwright (its own browser builds are never downloaded)."""
    if CHROMIUM is None:
        pytest.skip("needs chromium (apt-get install chromium; CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
    with sync_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()
