"""HTTP limits like a front-line server's (issue 22, item 4), each tried on raw sockets
against a real uvicorn with the service's protocol (app/http/connections.py)."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import uvicorn

from app.http import connections
from load_tests.server import free_port
from tests.app.conftest import sample_images
from tests.app.http.test_hardening import live_server, raw_request


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


def test_the_default_connection_limit_follows_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert connections.default_max_connections() == 1024 - connections.FD_RESERVE
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert connections.default_max_connections() == (1 << 20) - connections.FD_RESERVE


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


# --- an answer in one write ---------------------------------------------------------------

class _RecordedTransport:
    """A connection's transport that records what is written to it, call by call."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts: Any) -> None:
        parts = [bytes(p) for p in parts]
        self.writes.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _recorded_connection(server: uvicorn.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                                 _RecordedTransport]:
    before = set(server.server_state.connections)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
    for _ in range(200):
        new = set(server.server_state.connections) - before
        if new:
            break
        await asyncio.sleep(0.01)
    (protocol,) = new
    protocol.transport = recorded = _RecordedTransport(protocol.transport)
    return reader, writer, recorded


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head + await asyncio.wait_for(reader.readexactly(length), 20)


async def test_each_answer_leaves_in_one_write_its_head_with_its_body() -> None:
    """uvloop sends at each write: uvicorn's head, then body, were two system calls and two
    packets per answer. Every kind of answer, read whole by the client, left in one write."""
    body = orjson.dumps({"instances": [sample_images(1)[0].tolist()]})
    async with live_server() as (server, _):
        reader, writer, recorded = await _recorded_connection(server)
        answers = []
        for request in (b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n",
                        raw_request("/v1/models/fashion-cnn:predict", body),
                        raw_request("/v1/models/no-such-model:predict", body),  # an error answer
                        b"GET /docs-assets/favicon.png HTTP/1.1\r\nHost: t\r\n\r\n",  # a file, read in a thread
                        b"HEAD /docs-assets/favicon.png HTTP/1.1\r\nHost: t\r\n\r\n"):  # a head, no body
            writer.write(request)
            if request.startswith(b"HEAD"):
                answers.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20))
            else:
                answers.append(await read_answer(reader))
        writer.close()
    assert [a.split(b"\r\n")[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
                                                      b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b"\x89PNG" in answers[3]
    assert b'"predictions"' in answers[1]
    assert recorded.writes == answers  # one write each, and nothing else written


@asynccontextmanager
async def plain_server(app: Any) -> AsyncIterator[int]:
    """uvicorn with the service's protocol (and its default limits) serving a bare ASGI app; its port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning",
                            http=connections.PROTOCOL, loop="uvloop")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield config.port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def answer_after(event: asyncio.Event, headers: list[tuple[bytes, bytes]], started: asyncio.Event | None = None
                 ) -> Any:
    """An ASGI app that starts its answer (then sets `started`), waits for `event`, then
    sends its body, b"part"."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if started is not None:
            started.set()
        await event.wait()
        await send({"type": "http.response.body", "body": b"part", "more_body": False})

    return app


async def test_a_streamed_answer_sends_its_head_before_its_first_part() -> None:
    """Holding the head for the body must not hold a stream's: the client sees it while the
    app has yet to produce anything."""
    first_part_may_go = asyncio.Event()
    try:
        async with plain_server(answer_after(first_part_may_go, [(b"content-type", b"text/plain")])) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            first_part_may_go.set()
            rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 20)
            writer.close()
    finally:
        first_part_may_go.set()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head
    assert rest == b"4\r\npart\r\n0\r\n\r\n"


@pytest.mark.parametrize("refused", [
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", b"HTTP/1.1 431"),  # ours
    (b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 400"),  # uvicorn's parser
])
async def test_a_held_head_leaves_before_the_refusal_of_the_request_piped_behind_it(
        refused: tuple[bytes, bytes]) -> None:
    """A pipelined request refused by the connection itself (431, or uvicorn's 400) while the
    answer before it holds its head (its app awaiting, between head and body): the client
    reads that head first, then the refusal, in the order the requests were sent."""
    request, status = refused
    head_held, body_may_go = asyncio.Event(), asyncio.Event()
    try:
        async with plain_server(answer_after(body_may_go, [(b"content-length", b"4")], head_held)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(head_held.wait(), 20)  # the server is in this process
            writer.write(request)
            received = await read_all(reader)
            writer.close()
            body_may_go.set()  # the server waits for its apps as it stops
    finally:
        body_may_go.set()
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert status in received, received[:400]
