"""Fixtures for the service: the committed models, an in-process client, a real server."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.main import create_app
from app.manifest import load_manifest
from app.runtime import session_options
from app.settings import Settings
from tests.conftest import MODELS, ROOT


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app under its lifespan, reached in-process through httpx's ASGI transport."""
    settings = Settings(model_dir=MODELS, **overrides)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def reference_session(name: str, variant: str = "int8") -> tuple[ort.InferenceSession, Any]:
    """A plain ORT session on the file the service serves, with the service's session options
    (graph optimisations change int8 rounding slightly), to compare answers with."""
    folder = MODELS / name / "1"
    manifest = load_manifest(folder)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`python -m app` on a free loopback port, as a user would start it."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), "--model-dir", str(MODELS)],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    running = RunningServer(process, port, log)
    try:
        wait_ready(running)
        yield running
    finally:
        process.terminate()
        process.wait(30)


def wait_ready(server: RunningServer, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready in {timeout_s}s:\n{server.log.read_text()}")
