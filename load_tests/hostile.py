"""Hostile and unlucky inputs against a real server: each case with what the service must do
and what it did, as a table. Not run in CI (tests/ holds the checks); run it after a change
to the request path, and record its table in docs/benchmarks.md.

    python -m load_tests.hostile              # every case, about a minute
    python -m load_tests.hostile --only slowloris idle-sockets

Starts `python -m app` on a free loopback port (with an open-file limit of 1024, as many
containers have, so the default connection limit is the one sized from it), and a second
one with two workers for the metrics cases. Every case is bounded in bytes and time and
talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h2.exceptions
import httpx
import numpy as np
import orjson

from load_tests.h2_client import RawGrpcClient
from load_tests.server import ROOT, ServerProcess

JSON_HEADERS = {"Content-Type": "application/json"}
TOKEN = "hostile-suite-admin"


def _v2_text(width: int) -> bytes:
    return orjson.dumps({"inputs": [{"name": "token_ids", "shape": [1, width], "datatype": "INT64", "data": [5] * width},
                                    {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1]}]})


def _big_png_instances() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (1990, 1990), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    return orjson.dumps({"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}] * 3})


Request = tuple[str, bytes, dict[str, str]]
HOSTILE_REQUESTS: dict[str, Callable[[], Request]] = {
    "wide V2 text": lambda: ("/v2/models/sst2-lstm/infer", _v2_text(1_000_000), JSON_HEADERS),
    "texts that expand under NFKC": lambda: ("/v1/models/sst2-lstm:predict",
                                             orjson.dumps({"instances": ["\ufdfa" * 400_000] * 8}), JSON_HEADERS),
    "base64 images at the pixel limit": lambda: ("/v1/models/fashion-cnn:predict", _big_png_instances(), JSON_HEADERS),
}
"""Requests whose decoding grows with the body: each must be decoded off the event loop
(tests/app/http/test_hardening.py checks where; this suite measures liveness meanwhile)."""


@dataclass
class Outcome:
    expected: str
    saw: str
    ok: bool


# --- raw sockets ---------------------------------------------------------------------------

async def _send(port: int, data: bytes, *, read_s: float = 15) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(_read_all(reader), read_s)
    except (TimeoutError, OSError) as e:  # the connection never opened whole
        return f"<{type(e).__name__}>".encode()
    finally:
        writer.close()


def _status(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")[9:] or answer[:40].decode("latin-1", "replace")


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode() + body


async def _until_closed(port: int, first: bytes, then: Callable[[int], bytes], every_s: float, limit: int
                        ) -> tuple[bytes, int, float]:
    """Send `first`, then `then(i)` every `every_s` until the server closes (or `limit` sends):
    (what it answered, sends made, seconds until it closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answered = asyncio.ensure_future(asyncio.wait_for(_read_all(reader), every_s * limit + 10))
    writer.write(first)
    sent = 0
    try:
        while sent < limit and not answered.done():
            writer.write(then(sent))
            await writer.drain()
            sent += 1
            await asyncio.sleep(every_s)
    except (ConnectionResetError, BrokenPipeError):
        pass
    try:
        answer = await answered
    except TimeoutError:
        answer = b"<reset>"
    writer.close()
    return answer, sent, time.monotonic() - started


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed, read as it comes: a write of ours that fails
    because the server closed (a broken pipe, a reset) fails the reader too, and a read of
    everything at the end would lose the answer that came before (`<reset>` where none did)."""
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return b"".join(chunks) or b"<reset>"
    return b"".join(chunks)


# --- the cases -----------------------------------------------------------------------------

class Suite:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.port = server.port

    def http(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=timeout)

    async def _flood(self, body: bytes, headers: dict[str, str], each: int, statuses: Counter[int]) -> None:
        """`body` to fashion-cnn's V2 endpoint from 16 clients at once, `each` times each; the
        statuses counted in `statuses`."""
        def one_client() -> None:
            with self.http() as client:
                for _ in range(each):
                    statuses[client.post("/v2/models/fashion-cnn/infer", content=body, headers=headers).status_code] += 1

        await asyncio.gather(*[asyncio.to_thread(one_client) for _ in range(16)])

    async def repeated_outputs(self) -> Outcome:
        body = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                         "data": [0.0] * 784}], "outputs": [{"name": "logits"}] * 50_000})
        rss = self.server.resident_mb()
        answer = await _send(self.port, _post("/v2/models/fashion-cnn/infer", body))
        return Outcome("400 before any work", f"{_status(answer)} ({len(body) / 1e6:.1f} MB in, {len(answer):,} bytes "
                       f"out, RSS {rss:.0f} -> {self.server.resident_mb():.0f} MB)", _status(answer).startswith("400"))

    async def response_over_limit(self) -> Outcome:
        rows = 1024
        body = orjson.dumps({"inputs": [{"name": "pixels", "shape": [rows, 1, 28, 28], "datatype": "FP32",
                                         "data": [0.0] * (784 * rows)}]})
        answer = await _send(self.port, _post("/v2/models/fashion-cnn/infer", body))
        message = orjson.loads(answer.partition(b"\r\n\r\n")[2] or b"{}").get("error", "")[:60]
        return Outcome("413 with the figures (server: --max-response-bytes 200000)", f"{_status(answer)}: {message}",
                       _status(answer).startswith("413"))

    async def bad_names(self) -> Outcome:
        seen = []
        for name in ["..", "%2e%2e", "a%00b", "a%5Cb", "x" * 5000]:
            answer = await _send(self.port, f"POST /v2/repository/models/{name}/load HTTP/1.1\r\nHost: t\r\n"
                                 f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                 .encode())
            seen.append(_status(answer)[:3])
        with self.http() as client:
            index = client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        names = sorted({e["name"] for e in index})
        return Outcome("400 each, no phantom in the index", f"{', '.join(seen)}; index {names}",
                       set(seen) == {"400"} and ".." not in names)

    async def empty_api_key(self) -> Outcome:
        result = subprocess.run([sys.executable, "-m", "app", "--port", "0"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env={**os.environ, "ORTSERVE_API_KEYS": '[""]'})
        line = result.stderr.strip().splitlines()[-1][-70:] if result.stderr.strip() else ""
        return Outcome("refused at start", f"exit {result.returncode}: ...{line}", result.returncode == 2)

    async def header_1mb(self) -> Outcome:
        answer = await _send(self.port, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        return Outcome("431, closed", _status(answer), _status(answer).startswith("431"))

    async def many_headers(self) -> Outcome:
        headers = b"".join(b"X-%d: 1\r\n" % i for i in range(100_000))
        answer = await _send(self.port, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        return Outcome("431, closed", _status(answer), _status(answer).startswith("431"))

    async def endless_headers(self) -> Outcome:
        answer, sent, _ = await _until_closed(self.port, b"GET /v2/health/live HTTP/1.1\r\nX-Endless: ",
                                              lambda _: b"b" * 65536, 0.0, 1000)
        return Outcome("431 and closed long before 62 MB", f"{_status(answer)}, closed after {sent * 64 / 1024:.1f} MB",
                       sent < 100)

    async def slowloris(self) -> Outcome:
        answer, sent, seconds = await _until_closed(self.port, b"GET /v2/health/live HTTP/1.1\r\n",
                                                    lambda i: b"X-Slow-%d: 1\r\n" % i, 1.0, 70)
        return Outcome("408 within header_timeout_s (5 s)", f"{_status(answer)} after {seconds:.1f} s ({sent} lines)",
                       _status(answer).startswith("408") and sent < 70)

    async def chunked_drip(self) -> Outcome:
        answer, sent, seconds = await _until_closed(
            self.port, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            lambda _: b"1\r\na\r\n", 1.0, 70)
        return Outcome("answered, then closed", f"{_status(answer)}, closed after {seconds:.1f} s", sent < 70)

    async def silent_connection(self) -> Outcome:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.monotonic()
        try:
            closed = await asyncio.wait_for(reader.read(), 70) == b""
        except TimeoutError:
            closed = False
        writer.close()
        return Outcome("closed after keep_alive_s (5 s)", f"closed={closed} after {time.monotonic() - started:.1f} s",
                       closed)

    async def idle_sockets(self) -> Outcome:
        held = []
        for _ in range(1100):
            held.append(await asyncio.open_connection("127.0.0.1", self.port))
        started = time.monotonic()
        answer = await _send(self.port, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        waited = (time.monotonic() - started) * 1000
        ready = await _send(self.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        for _, writer in held:
            writer.close()
        return Outcome("liveness and readiness answer (fd limit 1024)",
                       f"live {_status(answer)} in {waited:.0f} ms, ready {_status(ready)}",
                       _status(answer).startswith("200") and _status(ready).startswith("200"))

    async def slow_body(self) -> Outcome:
        body = orjson.dumps({"instances": ["a fine film"]})
        answer, _, seconds = await _until_closed(self.port, _post("/v1/models/sst2-lstm:predict", body)[:-5],
                                                 lambda _: b"", 1.0, 60)
        return Outcome("408 after body_timeout_s (30 s)", f"{_status(answer)} after {seconds:.0f} s",
                       _status(answer).startswith("408"))

    async def smuggling(self) -> Outcome:
        body = b'{"instances": ["a"]}'
        answer = await _send(self.port, b"POST /v1/models/sst2-lstm:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        return Outcome("400 (both lengths), closed", _status(answer), _status(answer).startswith("400"))

    async def pipelined(self) -> Outcome:
        one = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
        answer = await _send(self.port, one * 3 + b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        count = answer.count(b"HTTP/1.1 200")
        return Outcome("4 answers, in order", f"{count} answers", count == 4)

    async def non_integral_int(self) -> Outcome:
        body = orjson.dumps({"inputs": [{"name": "token_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 1.9]},
                                        {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2]}]})
        answer = await _send(self.port, _post("/v2/models/sst2-lstm/infer", body))
        return Outcome("400 naming the tensor", _status(answer), b"token_ids" in answer and b" 400 " in answer[:20])

    async def timeout_true(self) -> Outcome:
        body = orjson.loads(_v2_text(2)) | {"parameters": {"timeout": True}}
        answer = await _send(self.port, _post("/v2/models/sst2-lstm/infer", orjson.dumps(body)))
        return Outcome("400", _status(answer), _status(answer).startswith("400"))

    async def large_bodies(self) -> Outcome:
        """20 concurrent 8 MB bodies (the server: max_large_bodies_bytes 64 MiB): liveness
        meanwhile, and memory before, at the peak, after."""
        before = self.server.resident_mb()
        rows = 2500  # 7.8 MB of fashion-cnn pixels as Triton binary tensors
        header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [rows, 1, 28, 28], "datatype": "FP32",
                                           "parameters": {"binary_data_size": rows * 3136}}],
                               "parameters": {"binary_data_output": True}})
        body = header + np.zeros((rows, 1, 28, 28), np.float32).tobytes()
        extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
        answers: list[bytes] = []

        async def burst() -> None:
            answers.extend(await _concurrently(
                [_send(self.port, _post("/v2/models/fashion-cnn/infer", body, extra), read_s=60) for _ in range(20)]))

        worst, peak = await _probe(self.server.url, burst(), self.server.resident_mb)
        await asyncio.sleep(3)
        after = self.server.resident_mb()
        statuses = Counter(_status(a)[:3] for a in answers)
        return Outcome("bounded together (503 past max_large_bodies_bytes); liveness answers; memory returns",
                       f"{dict(sorted(statuses.items()))}; liveness worst {worst:.0f} ms; RSS {before:.0f} -> peak "
                       f"{peak:.0f} -> {after:.0f} MB 3 s later", after < before + 100 and "500" not in statuses)

    async def grpc_answers_not_taken(self) -> Outcome:
        """One connection whose client takes no answer opens as many ModelInfer calls as the
        server lets it (up to 4,200, past max_grpc_calls); other clients meanwhile."""
        client = await RawGrpcClient.to(self.server.grpc_port)
        await client.receive()  # the server's settings: its stream limit
        opened = 0
        while opened < 4200 and client.room():
            await client.call("ModelInfer", _grpc_image())
            opened += 1
        live, health = await _grpc_live(self.server.grpc_target)
        client.close()
        return Outcome("one connection stops at max_grpc_calls_per_connection (128); others answered",
                       f"{opened} calls opened on it; then ServerLive {live}, health {health}",
                       opened <= 128 and live == "OK" and health == "SERVING")

    async def grpc_rapid_reset(self) -> Outcome:
        """HTTP/2's rapid reset: calls opened and reset at once, 5 s, from a process of its own
        (so as not to slow this one's probes), on one connection; liveness meanwhile."""
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"import asyncio, load_tests.hostile as h; asyncio.run(h.reset_calls({self.server.grpc_port}, 5))",
            cwd=ROOT, stdout=subprocess.PIPE)
        await asyncio.sleep(1)
        live, health = await _grpc_live(self.server.grpc_target)  # while it goes on
        said: list[bytes] = []

        async def the_rest() -> None:
            said.append((await attacker.communicate())[0])

        worst, _ = await _probe(self.server.url, the_rest())
        return Outcome("HTTP and gRPC answer meanwhile", f"{said[0].decode().strip()}; meanwhile ServerLive {live}, "
                       f"health {health}, HTTP liveness worst {worst:.0f} ms",
                       live == "OK" and health == "SERVING" and attacker.returncode == 0)

    async def grpc_large_messages(self) -> Outcome:
        """100 unary ModelInfer calls of 4 MB at once over 4 connections (gRPC core receives a
        message whole before the service sees its size): most refused past
        max_large_bodies_bytes; liveness meanwhile, and memory before, at the peak, after (a
        refused call's message once stayed until Python's cyclic collector ran: 1 GB after
        300 such calls; docs/benchmarks.md, "A refused gRPC call's message")."""
        import grpc

        before = self.server.resident_mb()
        rows = 1337  # 4.2 MB of fashion-cnn pixels
        message = _grpc_image(rows)
        channels = [grpc.aio.insecure_channel(self.server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
                     for _ in range(4)]
        calls = [c.unary_unary("/inference.GRPCInferenceService/ModelInfer") for c in channels]
        codes: Counter[str] = Counter()

        async def one(number: int) -> None:
            try:
                await calls[number % 4](message, timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1

        async def burst() -> None:
            await asyncio.gather(*(one(n) for n in range(100)))

        try:
            worst, peak = await _probe(self.server.url, burst(), self.server.resident_mb)
        finally:
            for channel in channels:
                await channel.close()
        await asyncio.sleep(3)
        after = self.server.resident_mb()
        return Outcome("most refused (RESOURCE_EXHAUSTED), none INTERNAL; liveness answers; memory returns",
                       f"{dict(sorted(codes.items()))}; liveness worst {worst:.0f} ms; RSS {before:.0f} -> peak "
                       f"{peak:.0f} -> {after:.0f} MB 3 s later",
                       after < before + 100 and "INTERNAL" not in codes and codes["RESOURCE_EXHAUSTED"] > 0)

    async def nan_bodies(self) -> Outcome:
        """V2 bodies of 20 images with a NaN at the front: orjson refuses NaN, and the
        standard library's parser, which reads it, takes 14 times as long; 400 of them, 16 at
        a time (each is then fashion-cnn's 400: an image holds no NaN), liveness meanwhile."""
        body = orjson.dumps({"inputs": [{"name": "pixels", "shape": [20, 1, 28, 28], "datatype": "FP32",
                                         "data": [0] * (20 * 784)}]}).replace(b'"data":[0', b'"data":[NaN', 1)
        statuses: Counter[int] = Counter()
        worst, _ = await _probe(self.server.url, self._flood(body, JSON_HEADERS, 25, statuses))
        return Outcome(f"400 each ({len(body):,} bytes: parsed off the loop); liveness answers meanwhile",
                       f"{dict(statuses)}; liveness worst {worst:.0f} ms", set(statuses) == {400})

    async def compressed_bombs(self) -> Outcome:
        """Bodies of 64 KB that unpack to 64 MB of zeros (Content-Encoding gzip, as
        tritonclient compresses requests), 160 of them, 16 at a time: each a 413 once it
        unpacks past max_body_bytes (16 MB), never held whole; liveness and memory meanwhile."""
        body = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
        statuses: Counter[int] = Counter()
        before = self.server.resident_mb()
        worst, peak = await _probe(self.server.url, self._flood(body, {**JSON_HEADERS, "Content-Encoding": "gzip"},
                                                                10, statuses), self.server.resident_mb)
        await asyncio.sleep(3)
        after = self.server.resident_mb()
        return Outcome(f"413 each ({len(body):,} bytes in, 64 MB unpacked); liveness answers; memory bounded "
                       "and returned", f"{dict(statuses)}; liveness worst {worst:.0f} ms; RSS {before:.0f} -> peak "
                       f"{peak:.0f} -> {after:.0f} MB 3 s later",
                       set(statuses) == {413} and peak < before + 16 * 20 + 100 and after < before + 50)

    async def heavy_decoding(self) -> Outcome:
        worst_all = []
        for name, build in HOSTILE_REQUESTS.items():
            path, body, headers = build()
            with self.http() as client:
                worst, _ = await _probe(self.server.url, asyncio.to_thread(partial(client.post, path, content=body,
                                                                                   headers=headers)))
            worst_all.append(f"{name.split()[0]} {worst:.0f}")
        return Outcome("liveness answers meanwhile (wall-clock, for the record)", "worst ms: " + ", ".join(worst_all),
                       True)


def _grpc_image(rows: int = 1) -> bytes:
    """ModelInfer's message for `rows` fashion-cnn images (zeros), serialized."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="fashion-cnn",
                                   raw_input_contents=[np.zeros((rows, 1, 28, 28), np.float32).tobytes()])
    request.inputs.add(name="pixels", datatype="FP32", shape=[rows, 1, 28, 28])
    return request.SerializeToString()


async def _grpc_live(target: str) -> tuple[str, str]:
    """(ServerLive's status code name, the health check's status name) from a client of its own."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
            live = "OK"
        except grpc.aio.AioRpcError as e:
            live = e.code().name
        try:
            checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            health = health_pb2.HealthCheckResponse.ServingStatus.Name(checked.status)
        except grpc.aio.AioRpcError as e:
            health = e.code().name
    return live, health


async def reset_calls(port: int, seconds: float) -> None:
    """The rapid-reset client (grpc_rapid_reset runs it in a process of its own): calls opened
    and reset at once on one connection for `seconds`; prints how many."""
    client = await RawGrpcClient.to(port, window=65535)
    stop, count, ended = time.monotonic() + seconds, 0, ""
    while time.monotonic() < stop:
        try:
            await client.reset_at_once("ServerLive", 100)
            count += 100
            await client.receive(timeout_s=0.001)
        except TimeoutError:
            pass
        except (ConnectionError, h2.exceptions.ProtocolError):  # the server may well shut such a client out
            ended = ", then the server closed the connection"
            break
    client.close()
    print(f"{count:,} calls reset at once{ended}")


async def _probe(url: str, work: Awaitable[object], sample: Callable[[], float] | None = None
                 ) -> tuple[float, float]:
    """Await `work` while a thread asks /v2/health/live every 5 ms: (slowest answer in ms,
    highest `sample` meanwhile)."""
    done, worst, high, asked = threading.Event(), [0.0], [0.0], [0]

    def ask() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/v2/health/live")
                worst[0] = max(worst[0], time.perf_counter() - started)
                asked[0] += 1
                if sample is not None:
                    high[0] = max(high[0], sample())
                time.sleep(0.005)

    prober = threading.Thread(target=ask)
    prober.start()
    try:
        while not asked[0]:  # the first answer before the work starts
            await asyncio.sleep(0.005)
        await work
    finally:
        done.set()
        prober.join()
    return worst[0] * 1000, high[0]


async def _concurrently(jobs: list[Awaitable[bytes]]) -> list[bytes]:
    return list(await asyncio.gather(*jobs))


def metrics_cases() -> dict[str, Outcome]:
    """Two workers: the metrics folder removed, then a worker killed; /metrics throughout."""
    folder = Path(tempfile.mkdtemp(prefix="hostile-metrics-"))
    body = orjson.dumps({"instances": ["a fine film"]})
    outcomes = {}
    with ServerProcess(["--workers", "2", "--no-warmup", "--metrics-dir", str(folder)]) as server:
        def total() -> tuple[int, float, set[str]]:
            answer = httpx.get(server.url + "/metrics", timeout=30)
            counted = sum(float(v) for v in re.findall(r"^ortserve_requests_total\{[^}]*\} (\S+)$", answer.text, re.M))
            return answer.status_code, counted, set(re.findall(r'process_resident_memory_bytes\{worker="(\d+)"\}',
                                                               answer.text))
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(200):
                client.post("/v1/models/sst2-lstm:predict", content=body)
        shutil.rmtree(folder)
        statuses = [total()[0] for _ in range(10)]
        outcomes["metrics folder removed"] = Outcome("/metrics answers (folder made again)",
                                                     f"statuses {sorted(set(statuses))}; folder back: {folder.exists()}",
                                                     set(statuses) == {200})
        workers: set[str] = set()
        for _ in range(40):
            _, before, seen = total()
            workers |= seen
            if len(workers) == 2:
                break
            time.sleep(0.2)
        time.sleep(1.5)
        _, before, _ = total()
        os.kill(int(sorted(workers)[0]), signal.SIGKILL)
        values = [before]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(20):
                client.post("/v1/models/sst2-lstm:predict", content=body)
                values.append(total()[1])
                time.sleep(0.2)
        outcomes["worker killed"] = Outcome("counters never decrease", f"requests_total {values[0]:.0f} -> "
                                            f"{min(values):.0f} (lowest) -> {values[-1]:.0f}",
                                            values == sorted(values))
    shutil.rmtree(folder, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    cases = [name for name in vars(Suite) if not name.startswith("_") and name != "http"]
    parser = argparse.ArgumentParser(prog="python -m load_tests.hostile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[*cases, "metrics"], metavar="CASE")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                        help="an extra flag for the first server, e.g. --server-arg=--no-trim-memory (repeatable)")
    args = parser.parse_args(argv)
    chosen = args.only or [*cases, "metrics"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    rows: dict[str, Outcome] = {}
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the server inherits it
    try:
        server = ServerProcess(["--model-dir", str(args.model_dir.resolve()), "--model-control-mode", "explicit",
                                "--load-model", "*", "--max-response-bytes", "200000", *args.server_arg],
                               env={"ORTSERVE_ADMIN_TOKEN": TOKEN})
        server.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # this client opens more than 1024
    try:
        suite = Suite(server)
        rss_before = server.resident_mb()
        for name in chosen:
            if name == "metrics":
                continue
            rows[name] = asyncio.run(getattr(suite, name)())
            print(f"{name}: {rows[name].saw}", flush=True)
        time.sleep(3)
        rss_after = server.resident_mb()
        rows["memory over the suite"] = Outcome("back near its level (within 100 MB)",
                                                f"RSS {rss_before:.0f} MB before, {rss_after:.0f} MB 3 s after",
                                                rss_after < rss_before + 100)
    finally:
        server.__exit__(None, None, None)
    if "metrics" in chosen:
        rows.update(metrics_cases())
    print("\n| case | expected | saw | ok |\n|---|---|---|---|")
    for name, outcome in rows.items():
        print(f"| {name} | {outcome.expected} | {outcome.saw} | {'yes' if outcome.ok else '**no**'} |")
    return 0 if all(o.ok for o in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
