"""Hardening: what one request may cost, clients that hang up or dawdle, connection limits,
and a loop that stays responsive while hostile requests are handled."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import uvicorn

from app.http.connections import uvicorn_options
from app.main import create_app
from app.settings import Settings
from load_tests.hostile import HOSTILE_REQUESTS
from load_tests.server import ServerProcess, free_port
from tests.app.conftest import left_behind, sample_images, serving
from tests.conftest import MODELS

TEXT_IDS = {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1]}


def v2_text(width: int) -> dict[str, Any]:
    return {"inputs": [{"name": "token_ids", "shape": [1, width], "datatype": "INT64", "data": [5] * width},
                       TEXT_IDS]}


# --- what one request may cost -----------------------------------------------------------

async def test_v2_text_wider_than_the_models_max_length_is_refused() -> None:
    async with serving() as client:
        ok = await client.post("/v2/models/sst2-lstm/infer", json=v2_text(128))
        wide = await client.post("/v2/models/sst2-lstm/infer", json=v2_text(129))
    assert ok.status_code == 200, ok.text
    assert wide.status_code == 400
    assert "129 tokens wide; this model reads at most 128" in wide.json()["error"]


async def test_long_texts_are_cut_before_normalisation() -> None:
    expanding = "\ufdfa"  # one character that NFKC turns into 18
    long_text = "a fine film " * 200 + expanding * 50_000
    async with serving(max_text_chars=2048) as client:
        whole = await client.post("/v1/models/sst2-lstm:predict", json={"instances": [long_text]})
        cut = await client.post("/v1/models/sst2-lstm:predict", json={"instances": [long_text[:2048]]})
    assert whole.status_code == 200, whole.text
    assert whole.json()["predictions"] == cut.json()["predictions"]


@pytest.mark.parametrize("shape", [[2**40, 2**40, 1, 1], [1, 2**62, 28, 28], [-1, 1, 28, 28], [2**63 - 1, 1, 28, 28]])
async def test_shapes_whose_element_count_overflows_are_a_400(shape: list[int]) -> None:
    body = {"inputs": [{"name": "pixels", "shape": shape, "datatype": "FP32", "data": [0.0]}]}
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": shape, "datatype": "FP32",
                                       "parameters": {"binary_data_size": 4}}]})
    async with serving() as client:
        as_json = await client.post("/v2/models/fashion-cnn/infer", json=body)
        as_binary = await client.post("/v2/models/fashion-cnn/infer", content=header + b"\0" * 4,
                                      headers={"Inference-Header-Content-Length": str(len(header))})
    for response in (as_json, as_binary):
        assert response.status_code == 400, response.text
        assert "pixels" in response.json()["error"]
        if min(shape) < 0:  # said as what it is, not as a count of -784 values
            assert "has a negative dimension" in response.json()["error"]


async def test_image_limits_are_settings() -> None:
    from PIL import Image

    big, gif = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(big, format="PNG")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(gif, format="GIF")
    instances = [{"b64": base64.b64encode(big.getvalue()).decode()}, {"b64": base64.b64encode(gif.getvalue()).decode()}]
    async with serving(max_image_pixels=10_000) as client:
        too_big = await client.post("/v1/models/fashion-cnn:predict", json={"instances": instances[:1]})
        not_allowed = await client.post("/v1/models/fashion-cnn:predict", json={"instances": instances[1:]})
    assert too_big.status_code == 400
    assert "200x200 pixels is larger than the 10,000 pixels accepted" in too_big.json()["error"]
    assert not_allowed.status_code == 400
    assert "not one of the accepted formats (PNG, JPEG)" in not_allowed.json()["error"]


# --- a real server, in this process ------------------------------------------------------

@asynccontextmanager
async def live_server(**overrides: Any) -> AsyncIterator[tuple[uvicorn.Server, Any]]:
    """uvicorn serving the app on a free loopback port, in this event loop."""
    settings = Settings(**({"model_dir": MODELS} | overrides))
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(600):
        if server.started:
            break
        await asyncio.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield server, app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def raw_request(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def test_queued_requests_of_clients_that_hung_up_are_never_computed() -> None:
    # inline_rows=0: the gated model must block a thread, not the event loop.
    async with live_server(max_inflight_batches=1, max_queue_delay_ms=0, inline_rows=0) as (server, app):
        port = server.config.port
        model = app.services.repository.get("fashion-cnn")
        gate, seen_rows = threading.Event(), []
        real_run = model.session.run

        def gated_run(inputs: dict[str, np.ndarray], may_go_wide: bool = True) -> dict[str, np.ndarray]:
            seen_rows.append(len(next(iter(inputs.values()))))
            assert gate.wait(10)
            return real_run(inputs, may_go_wide)

        model.session.run = gated_run
        body = orjson.dumps({"instances": [sample_images(1)[0].tolist()]})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw_request("/v1/models/fashion-cnn:predict", body))  # runs, and blocks in the model
        await writer.drain()
        for _ in range(200):
            if seen_rows:
                break
            await asyncio.sleep(0.01)
        assert seen_rows == [1]
        hung_up = []
        for _ in range(20):  # queued behind the blocked batch, then the clients hang up
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(raw_request("/v1/models/fashion-cnn:predict", body))
            await w.drain()
            hung_up.append((r, w))
        for _ in range(200):
            if model.batcher.queued_rows == 20:
                break
            await asyncio.sleep(0.01)
        assert model.batcher.queued_rows == 20
        for _, w in hung_up:
            w.close()
        for _ in range(200):  # uvicorn notices each hang-up as its connection is lost
            if len(server.server_state.connections) == 1:
                break
            await asyncio.sleep(0.01)
        gate.set()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()
        for _ in range(200):
            if model.batcher.queued_rows == 0:
                break
            await asyncio.sleep(0.01)
        metrics = app.metrics
        dropped = metrics.requests_dropped.labels("fashion-cnn", "client_gone")._value.get()
    assert seen_rows == [1]  # none of the 20 was computed
    assert dropped == 20


async def test_a_body_that_arrives_too_slowly_gets_408_and_the_connection_closes() -> None:
    async with live_server(body_timeout_s=0.3) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        body = orjson.dumps({"instances": ["a fine film"]})
        request = raw_request("/v1/models/sst2-lstm:predict", body)
        writer.write(request[:-5])  # everything but the last bytes of the body
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 10)  # read() returns at EOF: the server closed it
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"connection: close" in answer.lower()
    assert b"did not arrive within 0.3 s" in answer
    assert waited >= 0.2


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer on a kept-alive connection: its head, and its body by Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


async def test_only_a_body_still_arriving_is_timed() -> None:
    """A body that came whole with its head is read without waiting, so without a timer;
    one still arriving is watched (the test above: its 408)."""
    async with live_server(body_timeout_s=10) as (server, app):
        watched: list[float] = []
        timer = app.services.budget._body_timer
        watch = timer.watch

        def watching(item: Any, due: float, timeout_s: float) -> None:
            watched.append(timeout_s)
            watch(item, due, timeout_s)

        timer.watch = watching
        body = orjson.dumps({"instances": ["a fine film"]})
        request = raw_request("/v1/models/sst2-lstm:predict", body)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(request)  # head and body in one write: they arrive together
        await writer.drain()
        whole = await asyncio.wait_for(_answer(reader), 10)
        assert whole.startswith(b"HTTP/1.1 200"), whole[:100]
        assert watched == []
        writer.write(request[:-5])
        await writer.drain()
        await asyncio.sleep(0.2)  # the head and most of the body are in: the server waits for the rest
        writer.write(request[-5:])
        await writer.drain()
        split = await asyncio.wait_for(_answer(reader), 10)
        writer.close()
    assert split.startswith(b"HTTP/1.1 200"), split[:100]
    assert watched == [10]


async def test_connections_beyond_the_limit_get_503() -> None:
    async with live_server(max_connections=3, body_timeout_s=10) as (server, _):
        port = server.config.port
        body = orjson.dumps({"instances": ["a fine film"]})
        holders = []
        for _ in range(3):  # three requests whose bodies never finish: they hold their slots
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(raw_request("/v1/models/sst2-lstm:predict", body)[:-3])
            await w.drain()
            holders.append((r, w))
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw_request("/v1/models/sst2-lstm:predict", body))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 10)
        for _, w in [*holders, (reader, writer)]:
            w.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer


# --- the loop stays responsive -----------------------------------------------------------

@pytest.mark.parametrize("case", list(HOSTILE_REQUESTS))  # the heavy ones: each body is several MB
async def test_heavy_hostile_requests_are_decoded_off_the_event_loop(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behaviour, not a wall-clock bound (which a busy CI machine breaks): the work that
    grows with a hostile body runs on the decode threads, never on the event loop's thread.
    `python -m load_tests.hostile` measures liveness latency while these run."""
    from app.protocol import v1, v2

    steps: list[tuple[str, str]] = []

    def spy(name: str, real: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            steps.append((name, threading.current_thread().name))
            return real(*args)
        return wrapped

    monkeypatch.setattr(v2, "parse_request", spy("v2 parse", v2.parse_request))
    monkeypatch.setattr(v2, "decode_inputs", spy("v2 decode", v2.decode_inputs))
    monkeypatch.setattr(v1, "parse_instances", spy("v1 parse", v1.parse_instances))
    path, body, headers = HOSTILE_REQUESTS[case]()
    async with serving() as client:
        for model in client._transport.app.services.repository.all():  # type: ignore[attr-defined]
            monkeypatch.setattr(model.codec, "instances_to_inputs", spy("v1 decode", model.codec.instances_to_inputs))
        loop_thread = threading.current_thread().name
        response = await client.post(path, content=body, headers=headers)
    assert response.status_code < 500, response.text[:200]
    assert steps, "no decoding step ran"
    assert all(thread != loop_thread and thread.startswith("decode") for _, thread in steps), steps


# --- shutdown a load balancer can see ----------------------------------------------------

@pytest.mark.server
def test_sigterm_turns_readiness_503_before_any_connection_is_refused() -> None:
    import signal

    body = orjson.dumps({"instances": ["a fine film"]})
    # (time, what): "200", "503-ready", "refused", "reset", or another status
    events: list[tuple[float, str]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                try:
                    status = client.post("/v1/models/sst2-lstm:predict", content=body).status_code
                    events.append((time.monotonic(), str(status)))
                except httpx.ConnectError:
                    events.append((time.monotonic(), "refused"))
                    return
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # Closed by the drain before the request on it was read: reset, where the
                    # kernel had queued the connection for a worker whose listening socket closed
                    # (app/listeners.py), or closed as idle while the request was on its way
                    # (every keep-alive server's race at shutdown). No accepted request, and it
                    # may come only once readiness said 503.
                    events.append((time.monotonic(), "reset"))
                    return

    def readiness(url: str) -> None:
        while not stop.is_set():
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 503:
                    events.append((time.monotonic(), "503-ready"))
            except httpx.ConnectError:
                events.append((time.monotonic(), "refused"))
                return
            except (httpx.ReadError, httpx.RemoteProtocolError):  # as the load's connections, above
                events.append((time.monotonic(), "reset"))
                return
            time.sleep(0.02)

    with ServerProcess(["--model-dir", str(MODELS), "--drain-delay-s", "1.0"]) as server:
        assert server.process is not None
        threads = [threading.Thread(target=load, args=(server.url,)) for _ in range(4)]
        threads.append(threading.Thread(target=readiness, args=(server.url,)))
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(30)
        stop.set()
        for thread in threads:
            thread.join(15)
    kinds = [kind for _, kind in sorted(events)]
    assert code == 0
    assert "503-ready" in kinds
    assert "refused" in kinds  # the listener did close in the end
    assert kinds.index("503-ready") < kinds.index("refused")
    assert all(i > kinds.index("503-ready") for i, kind in enumerate(kinds) if kind == "reset")
    answered = [k for k in kinds if k not in ("503-ready", "refused", "reset")]
    assert answered
    assert set(answered) == {"200"}  # every accepted request was answered


_ROWS = 334  # 1 MB of fashion-cnn pixels as Triton binary tensors
_HEADER = orjson.dumps({"inputs": [{"name": "pixels", "shape": [_ROWS, 1, 28, 28], "datatype": "FP32",
                                    "parameters": {"binary_data_size": _ROWS * 3136}}]})
_REFUSED_BODIES = {
    "unknown model (404)": ("/v2/models/no-such-model/infer", _HEADER),
    "a shape the data does not fill (400)": ("/v2/models/fashion-cnn/infer",
                                             _HEADER.replace(b"[334,1,28,28]", b"[335,1,28,28]")),
}


@pytest.mark.parametrize("case", _REFUSED_BODIES)
async def test_a_refused_large_body_is_let_go_at_once_not_left_to_the_garbage_collector(case: str) -> None:
    """As gRPC's refused calls must be (tests/app/grpc/test_grpc_behaviour.py, where a cycle
    through the call's AbortError once kept every refused message: docs/benchmarks.md, "A
    refused gRPC call's message"): with Python's cyclic collector off, 20 refused 1 MB bodies
    leave none behind. Counted a step of the loop later: the client runs in this task (httpx's
    ASGI transport), and the step that the last answer woke is the one running, its wake-up
    holding the future that failed with the refusal, and through it the body (1.2 MB left,
    counted in that step)."""
    path, header = _REFUSED_BODIES[case]
    body = header + np.zeros((_ROWS, 1, 28, 28), np.float32).tobytes()
    headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
    async with serving() as client:
        expected = (await client.post(path, content=body, headers=headers)).status_code  # warm
        assert expected in (400, 404)
        with left_behind() as left:
            for _ in range(20):
                assert (await client.post(path, content=body, headers=headers)).status_code == expected
            await asyncio.sleep(0)
    assert left.bytes < len(body) // 2, f"{left.bytes:,} bytes left behind by 20 refused bodies of {len(body):,} bytes"
