"""HTTP limits like a front-line server's (issue 22, item 4), each tried on raw sockets
against a real uvicorn with the service's protocol (app/http/connections.py)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from pathlib import Path

import orjson
import pytest

from app import descriptors
from app.http.connections import HttpLimits
from app.settings import Settings
from tests.app.http.test_hardening import live_server, raw_request
from tests.app.onnx_models import save, widen


async def read_all(reader: asyncio.StreamReader, limit_s: float = 20) -> bytes:
    """Everything until the server closes the connection (EOF), failing past limit_s."""
    return await asyncio.wait_for(reader.read(), limit_s)


async def closed_by_server(reader: asyncio.StreamReader, limit_s: float = 20) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), limit_s):
            pass
    except ConnectionResetError:
        pass
    return True


async def test_too_many_header_bytes_are_a_431_and_the_connection_closes() -> None:
    async with live_server(max_header_bytes=8192) as (server, _):
        port = server.config.port
        # One header of 1 MB, sent whole.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        big = await read_all(reader)
        # A head that never ends: 64 KB pieces of one header value, never a blank line.
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        sent = 0
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # noqa: PT012  the server closes mid-stream
            for _ in range(1000):  # at most 64 MB
                writer2.write(b"b" * 65536)
                await writer2.drain()
                sent += 65536
                await asyncio.sleep(0)
        # Just under the limit is served.
        reader3, writer3 = await asyncio.open_connection("127.0.0.1", port)
        writer3.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Ok: " + b"c" * 7000 + b"\r\n\r\n")
        ok = await read_all(reader3)
    assert big.startswith(b"HTTP/1.1 431"), big[:100]
    assert b"exceeds 8192 bytes" in big
    assert sent < 8 * 1024 * 1024  # closed long before 64 MB
    assert ok.startswith(b"HTTP/1.1 200"), ok[:100]
    for w in (writer, writer2, writer3):
        w.close()


async def test_too_many_headers_are_a_431() -> None:
    async with live_server() as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        headers = b"".join(b"X-%d: 1\r\n" % i for i in range(101))
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        answer = await read_all(reader)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n" + headers[: headers.index(b"X-99")] +
                     b"\r\n")
        under = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert b"the request has 102 headers; at most 100 are accepted" in answer
    assert under.startswith(b"HTTP/1.1 200"), under[:100]


async def test_a_head_sent_one_line_at_a_time_is_cut_off_with_408() -> None:
    async with live_server(header_timeout_s=0.5) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        answered = asyncio.create_task(read_all(reader))  # reads as the server answers, up to its close
        writer.write(b"GET /v2/health/live HTTP/1.1\r\n")
        lines_sent = 0
        for i in range(100):  # slowloris: 100 header lines, 0.1 s apart, never a blank line
            if answered.done():
                break
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            await writer.drain()
            lines_sent += 1
            await asyncio.sleep(0.1)
        answer = await answered
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"did not arrive within 0.5 s" in answer
    assert lines_sent < 100  # the server closed it before the client gave up


async def test_connections_that_send_nothing_are_closed_new_or_between_requests() -> None:
    async with live_server(keep_alive_s=0.3) as (server, _):
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", server.config.port)
        used_reader, used = await asyncio.open_connection("127.0.0.1", server.config.port)
        used.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        first = await asyncio.wait_for(used_reader.readuntil(b"\r\n\r\n"), 10)
        assert await closed_by_server(silent_reader)
        assert await closed_by_server(used_reader)
        assert server.server_state.connections == set()
        silent.close()
        used.close()
    assert first.startswith(b"HTTP/1.1 200")


async def test_a_body_dripped_to_a_route_that_ignores_it_does_not_hold_the_connection() -> None:
    async with live_server(keep_alive_s=0.3) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        answered = asyncio.create_task(read_all(reader))
        dripped = 0
        try:
            for _ in range(100):  # a chunk every 0.1 s, more often than keep_alive_s: never idle
                if answered.done():
                    break
                writer.write(b"1\r\na\r\n")
                await writer.drain()
                dripped += 1
                await asyncio.sleep(0.1)
        except (ConnectionResetError, BrokenPipeError):
            pass
        answer = await answered  # read until the server closed the connection
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert dripped < 100


async def test_idle_and_slow_connections_at_the_limit_never_keep_liveness_out() -> None:
    async with live_server(max_connections=20, keep_alive_s=60, header_timeout_s=60) as (server, _):
        port = server.config.port
        held = []
        for i in range(60):  # three times the limit: idle ones, and heads that are still arriving
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if i % 2:
                w.write(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: 1\r\n")
                await w.drain()
            held.append((r, w))
        answers = []
        for _ in range(5):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answers.append(await read_all(r))
            w.close()
        open_now = len(server.server_state.connections)
        for _, w in held:
            w.close()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers]
    assert open_now <= 20


async def test_when_every_connection_runs_a_request_a_new_one_gets_503() -> None:
    async with live_server(max_connections=3, body_timeout_s=10) as (server, _):
        port = server.config.port
        body = orjson.dumps({"instances": ["a fine film"]})
        head = (b"POST /v1/models/sst2-lstm:predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        busy = []
        for _ in range(3):  # requests whose bodies never finish: they run, reading
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(head + body[:-3])
            await w.drain()
            busy.append((r, w))
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await read_all(reader)
        for _, w in [*busy, (reader, writer)]:
            w.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"retry-after: 1" in answer
    assert b"every connection is busy" in answer


def test_the_default_connection_limits_share_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP's and gRPC's connections with the reserve fit the limit: gRPC a quarter, HTTP the rest."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    budget = 1024 - descriptors.RESERVE
    assert descriptors.connection_limits(None, None, grpc=True) == (budget - budget // 4, budget // 4)
    assert descriptors.connection_limits(None, None, grpc=False) == (budget, 0)
    assert descriptors.connection_limits(None, 100, grpc=True) == (budget - 100, 100)
    assert descriptors.connection_limits(500, None, grpc=True) == (500, budget // 4)
    assert HttpLimits.from_settings(Settings(grpc=True)).max_connections == budget - budget // 4
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert sum(descriptors.connection_limits(None, None, grpc=True)) == (1 << 20) - descriptors.RESERVE


async def test_an_answer_sent_before_its_body_arrived_is_read_by_the_client_before_the_close() -> None:
    # Closing with unread bytes would reset the connection and lose the answer: the server
    # reads and drops the rest of the body (lingering), also for Connection: close requests.
    async with live_server(max_body_bytes=1_000_000) as (server, _):
        body = b"x" * 8_000_000
        answers = []
        for connection in ("keep-alive", "close"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
            writer.write(b"POST /v1/models/sst2-lstm:predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                         b"Connection: %s\r\n\r\n" % (len(body), connection.encode()) + body)
            answers.append(await read_all(reader))
            writer.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert b"exceeds the limit of 1000000 bytes" in answer


def _widen_request(rows: int) -> bytes:
    """A V2 request for `rows` rows of the widen model's answer, as binary tensors."""
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32", "data": [1.0] * rows}],
                         "parameters": {"binary_data_output": True}})
    return raw_request("/v2/models/widen/infer", body)


async def test_a_client_that_takes_none_of_its_answer_is_cut_off_after_send_timeout_s(tmp_path: Path) -> None:
    """16 MB asked for and nothing read: more than the sockets hold, so the answer waits in
    the server's write buffer; after send_timeout_s without progress the connection is reset
    and the answer let go (it was held for as long as the client stayed)."""
    save(tmp_path, "widen", widen(1 << 18))  # 1 MiB of FP32 per row
    async with live_server(model_dir=tmp_path, send_timeout_s=0.5) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(_widen_request(16))

        async def all_gone() -> None:
            while server.server_state.connections:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_gone(), 30)
        got = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 20):
                got += len(chunk)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        live = await read_all(reader)
        writer.close()
    assert got < 16 << 20
    assert live.startswith(b"HTTP/1.1 200")


async def test_a_client_that_reads_its_answer_slowly_gets_all_of_it(tmp_path: Path) -> None:
    """Slow is not stalled: 8 MB read 512 KiB at a time every 0.1 s, with send_timeout_s 2."""
    save(tmp_path, "widen", widen(1 << 18))
    async with live_server(model_dir=tmp_path, send_timeout_s=2) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(_widen_request(8))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        got = 0
        while got < length:
            chunk = await asyncio.wait_for(reader.read(1 << 19), 20)
            assert chunk, f"closed after {got} of {length} bytes"
            got += len(chunk)
            await asyncio.sleep(0.1)
        writer.close()
    assert length > 8 << 20
    assert got == length
