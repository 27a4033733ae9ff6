"""The access log: one line per request with what it cost and the batch it rode in."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.observability.access import FIELDS, HANDOVER_S, AccessLog, trace_id
from app.observability.access import LOGGER as ACCESS_LOGGER
from app.observability.log import formatter
from app.observability.log_stream import whole_lines
from load_tests import samples
from load_tests.stats import sample_total
from tests.app.conftest import grpc_image_request, sample_images, serving, serving_grpc
from tests.conftest import MODELS, ROOT, model_folder

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
VERSION = model_folder("fashion-cnn").name


class Captured:
    """The app's access log, swapped for one that writes into a buffer."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.app: FastAPI | None = None
        self.log = AccessLog("json", stream=self.buffer)

    def install(self, app: FastAPI, log_format: str = "json", sample: float = 1.0) -> None:
        self.app = app
        running = app.access_log  # type: ignore[attr-defined]
        assert running is not None, "access_log on: the lifespan starts one"
        running.stop()
        self.log = AccessLog(log_format, sample, stream=self.buffer)
        app.access_log = self.log  # type: ignore[attr-defined]
        self.log.start()

    def lines(self) -> list[str]:
        self.log.stop()  # every queued line written (the lifespan's end may have stopped it already)
        return self.buffer.getvalue().splitlines()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def captured() -> Captured:
    return Captured()


def v2_images(n: int) -> bytes:
    return samples.v2_json(n, MODELS)


async def test_each_request_gets_one_json_line_with_its_route_model_batch_and_ids(captured: Captured) -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, access_log=True, log_format="json") as client:
        captured.install(apps[0])
        one = await client.post("/v2/models/fashion-cnn/infer", content=v2_images(1),
                                headers={"traceparent": TRACEPARENT, "content-type": "application/json"})
        v1 = await client.post("/v1/models/fashion-cnn:predict",
                               json={"instances": [sample_images(1)[0].tolist()]})
        missing = await client.get("/v2/models/nope")
        nowhere = await client.get("/nowhere")
    assert [r.status_code for r in (one, v1, missing, nowhere)] == [200, 200, 404, 404]
    entries = captured.entries()
    assert len(entries) == 4
    first = entries[0]
    assert first["logger"] == "ortserve.access"
    assert set(FIELDS) <= set(first)
    assert first | {"total_ms": 0, "queue_ms": 0, "compute_ms": 0, "batch_id": 0, "time": ""} == first | {
        "method": "POST", "route": "/v2/models/{name}/infer", "status": 200, "model": "fashion-cnn",
        "version": VERSION, "bytes_in": len(v2_images(1)), "bytes_out": len(one.content), "batch_rows": 1,
        "batches": 1, "trigger": "idle", "request_id": one.headers["x-request-id"], "trace_id": TRACE,
        "client": "127.0.0.1", "total_ms": 0, "queue_ms": 0, "compute_ms": 0, "batch_id": 0, "time": ""}
    assert first["total_ms"] >= first["compute_ms"] > 0
    assert first["queue_ms"] >= 0
    assert entries[1]["route"] == "/v1/models/{name}:predict"
    assert entries[1]["batch_rows"] == 1
    assert entries[1]["request_id"] == v1.headers["x-request-id"]
    assert (entries[2]["route"], entries[2]["status"], entries[2]["model"], entries[2]["batch_id"]) == (
        "/v2/models/{name}", 404, "nope", None)
    assert (entries[3]["route"], entries[3]["model"], entries[3]["trace_id"]) == ("/nowhere", None, None)


async def test_requests_batched_together_name_the_same_batch_of_as_many_rows(captured: Captured) -> None:
    apps: list[FastAPI] = []
    body = v2_images(1)
    async with serving(apps.append, access_log=True, max_queue_delay_ms=20, idle_dispatch=False) as client:
        captured.install(apps[0])
        answers = await asyncio.gather(*(client.post("/v2/models/fashion-cnn/infer", content=body)
                                         for _ in range(12)))
        split = await client.post("/v2/models/fashion-cnn/infer", content=v2_images(200))
    assert all(a.status_code == 200 for a in answers)
    assert split.status_code == 200
    entries = captured.entries()
    singles = entries[:12]
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for entry in singles:
        by_batch.setdefault(entry["batch_id"], []).append(entry)
    assert len(by_batch) < 12  # some rode together
    for riders in by_batch.values():
        assert {e["batch_rows"] for e in riders} == {len(riders)}  # one row each: the batch is its riders
        assert {e["trigger"] for e in riders} <= {"full", "due", "idle"}
    assert entries[12]["batches"] == 2  # 200 rows: more than one batch (max_large_batch_size 128) carried it
    assert entries[12]["bytes_in"] == len(v2_images(200))


async def test_the_text_form_is_one_line_per_request_whatever_the_path_holds(captured: Captured) -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, access_log=True) as client:
        captured.install(apps[0], log_format="text")
        await client.get("/a%0Aforged%20line=1")
        await client.post("/v2/models/fashion-cnn/infer", content=v2_images(1))
    lines = captured.lines()
    assert len(lines) == 2
    assert 'route="/a\\nforged line=1" status=404' in lines[0]
    assert "route=/v2/models/{name}/infer status=200 model=fashion-cnn" in lines[1]
    assert "batch_rows=1 batches=1 trigger=idle" in lines[1]


EXAMPLE = {"method": "POST", "route": "/v2/models/{name}/infer", "status": 200, "model": "fashion-cnn",
           "version": "3", "bytes_in": 3153, "bytes_out": 180, "total_ms": 1.2345, "queue_ms": 0.0, "compute_ms": 2.5,
           "batch_id": 77, "batch_rows": 17, "batches": 1, "trigger": "full", "request_id": "",
           "trace_id": None, "client": "127.0.0.1:4242"}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_line_reads_as_logging_itself_would_write_it(log_format: str) -> None:
    """Lines are made without logging's records (a third of the time per line), so their
    start (time, level, logger) must stay what the service's formatters write for its other
    lines: here against those formatters, over times that cross seconds, go back, and sit a
    hair under the next second."""
    buffer = io.StringIO()
    log = AccessLog(log_format, stream=buffer)
    log.start()
    times = [1_764_950_400.0, 1_764_950_400.4999, 1_764_950_400.9999, 1_764_950_401.0, 1_764_950_399.25,
             1_780_000_000.5]
    weird = {**EXAMPLE, "route": 'a "b"=c\td ü', "status": "INVALID_ARGUMENT", "model": None}
    written = [(t, EXAMPLE) for t in times] + [(times[0], weird)]
    log._pending = [(t, dict(fields)) for t, fields in written]  # as `write` keeps them, with these times
    log.stop()
    got = buffer.getvalue().splitlines()
    assert len(got) == len(written)
    form = formatter(log_format)
    for line, (created, fields) in zip(got, written, strict=True):
        record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "MESSAGE", None, None)
        record.created, record.msecs = created, (created % 1) * 1000
        if log_format == "json":
            record.msg = f"{fields['method']} {fields['route']} {fields['status']}"
            record.fields = {name: fields.get(name) for name in FIELDS}
            assert json.loads(line) == json.loads(form.format(record))
            assert list(json.loads(line))[:4] == ["time", "level", "logger", "message"]
        else:
            start, _, message = form.format(record).partition("MESSAGE")
            assert line.startswith(start), (line, start)
    if log_format == "text":  # each value as is, or quoted where it holds a space, quote, = or control
        assert got[-1].partition(": ")[2] == ('method=POST route="a \\"b\\"=c\\td \\u00fc" status=INVALID_ARGUMENT version=3 '
                        "bytes_in=3153 bytes_out=180 total_ms=1.234 queue_ms=0.000 compute_ms=2.500 batch_id=77 "
                        "batch_rows=17 batches=1 trigger=full client=127.0.0.1:4242")


async def test_the_access_log_is_off_by_default() -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append) as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        assert apps[0].access_log is None  # type: ignore[attr-defined]


def test_sampling_keeps_a_fraction_of_successes_and_every_error() -> None:
    buffer = io.StringIO()
    draws = iter([0.1, 0.9, 0.3, 0.8])  # an error draws nothing
    log = AccessLog("json", sample=0.5, stream=buffer, draw=lambda: next(draws))
    log.start()
    for status in (200, 200, 503, 200, "UNAVAILABLE", "OK"):  # HTTP statuses, then gRPC codes
        log.write({"method": "GET", "route": "/x", "status": status})
    log.stop()
    assert [json.loads(line)["status"] for line in buffer.getvalue().splitlines()] == [200, 503, 200, "UNAVAILABLE"]


def test_lines_are_written_off_the_calling_thread() -> None:
    writers: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writers.append(threading.current_thread().name)
            return super().write(text)

    log = AccessLog("json", stream=Stream())
    log.start()
    log.write({"method": "GET", "route": "/x", "status": 200})
    log.stop()
    assert writers
    assert threading.current_thread().name not in writers


@pytest.mark.parametrize(("header", "expected"), [
    (TRACEPARENT.encode(), TRACE),
    (TRACEPARENT.upper().encode(), None),  # the standard's hex is lower case
    (f"00-{'0' * 32}-00f067aa0ba902b7-01".encode(), None),  # all zeros: invalid
    (b"00-4bf92f35-00f067aa0ba902b7-01", None),
    (f"00-{TRACE[:-1]}_-00f067aa0ba902b7-01".encode(), None),
    (None, None),
])
def test_the_trace_id_comes_from_a_valid_traceparent_only(header: bytes | None, expected: str | None) -> None:
    assert trace_id(header) == expected


async def test_a_logged_request_is_answered_as_an_unlogged_one(captured: Captured) -> None:
    """The logged path wraps receive and send: bodies, statuses and headers stay as they are."""
    body = v2_images(3)
    async with serving() as plain:
        unlogged = await plain.post("/v2/models/fashion-cnn/infer", content=body)
    apps: list[FastAPI] = []
    async with serving(apps.append, access_log=True) as client:
        captured.install(apps[0])
        logged = await client.post("/v2/models/fashion-cnn/infer", content=body)
        too_big = await client.post("/v2/models/fashion-cnn/infer", content=b"{" * 100, headers={
            "content-type": "application/json"})
    assert logged.status_code == unlogged.status_code == 200
    assert logged.json() == unlogged.json()
    assert too_big.status_code == 400
    assert [e["status"] for e in captured.entries()] == [200, 400]
    assert isinstance(httpx.Headers(logged.headers)["x-request-id"], str)


async def test_a_burst_on_the_loop_is_one_write() -> None:
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    log = AccessLog("json", stream=Stream())
    log.start()
    for n in range(50):
        log.write({"method": "GET", "route": f"/x/{n}", "status": 200})
    await asyncio.sleep(HANDOVER_S * 4)
    log.stop()
    assert len(writes) == 1
    assert [json.loads(line)["route"] for line in writes[0].splitlines()] == [f"/x/{n}" for n in range(50)]


async def test_grpc_inference_calls_get_their_lines_too(captured: Captured) -> None:
    import grpc

    async with serving_grpc(access_log=True) as (_, stub, app):
        captured.install(app)
        request = grpc_image_request()
        await stub.ModelInfer(request, metadata=(("x-request-id", "grpc-call-1"),))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ModelInfer(grpc_image_request("nope"))
    ok, missing = captured.entries()
    assert ok | {"total_ms": 0, "queue_ms": 0, "compute_ms": 0, "batch_id": 0, "time": "", "bytes_out": 0} == ok | {
        "method": "grpc", "route": "ModelInfer", "status": "OK", "model": "fashion-cnn", "version": VERSION,
        "bytes_in": request.ByteSize(), "batch_rows": 1, "batches": 1, "trigger": "idle",
        "request_id": "grpc-call-1", "client": "127.0.0.1", "total_ms": 0, "queue_ms": 0, "compute_ms": 0,
        "batch_id": 0, "time": "", "bytes_out": 0}
    assert ok["bytes_out"] > 0
    assert (missing["status"], missing["model"], missing["batch_id"]) == ("NOT_FOUND", "nope", None)


_WRITER = """
import asyncio, sys
from app.observability.access import HANDOVER_S, AccessLog

async def main(tag):
    log = AccessLog("json", stream=sys.stdout)
    log.start()
    for burst in range(20):  # as a busy worker's handovers: hundreds of lines each
        for n in range(300):
            log.write({"method": "POST", "route": f"/{tag}/{burst}/{n}", "status": 200, "client": "x" * 200})
        await asyncio.sleep(HANDOVER_S * 1.5)
    log.stop()

asyncio.run(main(sys.argv[1]))
"""


def test_two_processes_writing_to_one_pipe_tear_no_line() -> None:
    """Several workers write their lines to one stderr, a pipe under Docker or Kubernetes,
    whose reader can fall behind: a write larger than PIPE_BUF is then split, with the other
    worker's lines in between (2,598 torn lines in 36,759 from two real workers before)."""
    read_end, write_end = os.pipe()
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, tag], stdout=write_end, cwd=ROOT)
               for tag in ("a", "b")]
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
            time.sleep(0.002)  # a reader that lags, as a log shipper under load may
    assert [w.wait(60) for w in writers] == [0, 0]
    lines = b"".join(chunks).splitlines()
    routes = [json.loads(line)["route"] for line in lines]  # a torn line is not JSON
    for tag in ("a", "b"):
        assert [r for r in routes if r.startswith(f"/{tag}/")] == [
            f"/{tag}/{burst}/{n}" for burst in range(20) for n in range(300)]


def test_a_handover_is_cut_at_line_ends_into_pieces_a_pipe_takes_whole() -> None:
    lines = [b"x" * n + b"\n" for n in (10, 4000, 100, 5000, 3, 4094, 4095)]
    pieces = whole_lines(b"".join(lines), 4096)
    assert b"".join(pieces) == b"".join(lines)
    assert all(piece.endswith(b"\n") for piece in pieces)
    assert [len(p) for p in pieces] == [4012, 101, 5001, 4, 4095, 4096]  # a longer line alone, whole
    assert whole_lines(b"no end", 4096) == [b"no end"]
    assert whole_lines(b"", 4096) == []


def test_lines_past_the_backlog_are_dropped_counted_and_said_once_the_stream_takes_lines_again() -> None:
    """A stream that takes nothing (a pipe nobody reads) holds the writing thread: what waits
    for it is bounded, not the server's memory."""
    read_end, write_end = os.pipe()
    dropped: list[int] = []
    stream = os.fdopen(write_end, "w")
    log = AccessLog("json", stream=stream, backlog_chars=20_000, dropped=dropped.append)
    log.start()
    sent = 2_000  # ~200 chars each: several times what the pipe and the backlog hold together
    for n in range(sent):
        log.write({"method": "GET", "route": f"/x/{n}", "status": 200})  # off a loop: handed over at once
    assert sum(dropped) > 0
    assert log._listener.handed - log._listener.taken <= 20_000 + 1_000  # the backlog, and at most the line that passed it

    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()  # the stream takes lines again
    waited_until = time.monotonic() + 30
    while log._listener.taken < log._listener.handed:
        assert time.monotonic() < waited_until, "the writer catches up once its stream is read"
        time.sleep(0.01)
    log.write({"method": "GET", "route": "/after", "status": 200})
    log.stop()
    stream.close()
    reader.join(30)
    os.close(read_end)

    entries = [json.loads(line) for line in b"".join(received).splitlines()]  # every line whole
    notice = [e for e in entries if e["level"] == "warning"]
    assert len(notice) == 1
    assert notice[0]["dropped"] == sum(dropped)
    assert f"{sum(dropped)} access log lines dropped" in notice[0]["message"]
    routes = [e["route"] for e in entries if e["level"] == "info"]
    kept = sent - sum(dropped)
    assert routes == [f"/x/{n}" for n in range(kept)] + ["/after"]  # the first ones, in order; then the rest
    assert entries.index(notice[0]) == kept  # said where the lines are missing


def test_the_dropped_lines_notice_reads_as_a_warning_in_the_text_form() -> None:
    buffer = io.StringIO()
    log = AccessLog("text", stream=buffer, backlog_chars=-1)  # nothing may wait: every line dropped
    log.start()
    log.write({"method": "GET", "route": "/a", "status": 200})
    log.write({"method": "GET", "route": "/b", "status": 200})
    log.backlog_chars = 10_000
    log.write({"method": "GET", "route": "/c", "status": 200})
    log.stop()
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2
    assert f" WARNING {ACCESS_LOGGER}: 2 access log lines dropped: more than 10,000 characters" in lines[0]
    assert "route=/c " in lines[1]


async def test_the_server_counts_the_lines_it_dropped_in_its_metrics() -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, access_log=True) as client:
        log = apps[0].access_log  # type: ignore[attr-defined]
        assert isinstance(log, AccessLog)
        await asyncio.sleep(HANDOVER_S * 4)  # what the start-up's requests left, handed over
        before = sample_total((await client.get("/metrics")).text, "ortserve_access_log_dropped_lines_total")
        log.backlog_chars = -1  # as a stream that takes nothing would leave it
        for _ in range(3):
            assert (await client.get("/v2/health/ready")).status_code == 200
        await asyncio.sleep(HANDOVER_S * 4)
        after = sample_total((await client.get("/metrics")).text, "ortserve_access_log_dropped_lines_total")
    assert after - before == 4  # the three, and the first scrape's own line
