"""Calls that hold a place and do nothing (app/grpc/calls.py): idle streams and unary calls
whose message never comes are closed when a new call needs their place, or when the message
is late; calls at work are never closed for it, and beyond them a new call is refused."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from load_tests.h2_client import RawGrpcClient
from tests.app.conftest import serving_grpc
from tests.app.grpc.test_grpc_behaviour import failure, text_request

LIVE = "/inference.GRPCInferenceService/ServerLive"


async def _nothing() -> AsyncIterator[Any]:
    """A client that opens a call and never sends a message."""
    await asyncio.Event().wait()
    yield None  # never reached


def _live_without_its_message(channel: grpc.aio.Channel) -> Any:
    """ServerLive opened through a generic stub that can leave out the message."""
    call = channel.stream_unary(LIVE, request_serializer=pb.ServerLiveRequest.SerializeToString,
                                response_deserializer=pb.ServerLiveResponse.FromString)
    return call(_nothing())


class _Served:
    """The running service's gRPC: a stub, the health service's, a channel, and its call book."""

    def __init__(self, channel: grpc.aio.Channel, http: Any, app: Any) -> None:
        self.channel, self.http = channel, http
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.book = app.grpc_server.calls
        self.port = app.grpc_server.port

    async def calls_open(self, count: int) -> None:
        """Until the server counts `count` calls open (each takes its place on arrival)."""
        while len(self.book) < count:
            await asyncio.sleep(0.01)

    async def closed(self, reason: str) -> float:
        found = re.search(rf'ortserve_grpc_calls_closed_total{{reason="{reason}"}} (\S+)',
                          (await self.http.get("/metrics")).text)
        return float(found.group(1)) if found else 0.0


@asynccontextmanager
async def _served(**overrides: Any) -> AsyncIterator[_Served]:
    async with serving_grpc(**overrides) as (http, _, app):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_server.port}") as channel:
            yield _Served(channel, http, app)


async def test_idle_streams_at_the_limit_make_room_oldest_first_and_health_is_answered() -> None:
    """Four idle streams fill max_grpc_calls 4: a health check closes the one that has waited
    longest and is answered; a fifth stream fills the place again, and ServerLive closes the
    next oldest. Streams in use stay (the later ones, and the fifth)."""
    async with _served(max_grpc_calls=4) as served:
        streams = []
        for _ in range(4):
            streams.append(served.stub.ModelStreamInfer(_nothing()))
            await served.calls_open(len(streams))  # in order: the first is the oldest
        checked = await served.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        first = await failure(streams[0].read())
        streams.append(served.stub.ModelStreamInfer(_nothing()))
        await served.calls_open(4)
        live = await served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        second = await failure(streams[1].read())
        made_room = await served.closed("make_room")
        still_open = [not stream.done() for stream in streams[2:]]
        for stream in streams[2:]:
            stream.cancel()
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert live.live
    for closed in (first, second):
        assert closed.code() == grpc.StatusCode.UNAVAILABLE
        assert "closed while it waited with nothing to do" in closed.details()
        assert "max_grpc_calls (4)" in closed.details()
    assert made_room == 2
    assert still_open == [True, True, True]


async def test_an_idle_stream_of_another_service_is_closed_with_its_reason() -> None:
    """Reflection's streams are not the service's: closed to make room, they say why too
    (cancelled without a status, their client waited on)."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    async with _served(max_grpc_calls=2) as served:
        reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)
        streams = []
        for _ in range(2):
            streams.append(reflection.ServerReflectionInfo(_nothing()))
            await served.calls_open(len(streams))
        live = await served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        closed = await failure(streams[0].read())
        streams[1].cancel()
    assert live.live
    assert closed.code() == grpc.StatusCode.UNAVAILABLE
    assert "closed while it waited with nothing to do" in closed.details()


async def test_calls_at_work_are_not_closed_and_beyond_them_a_new_call_is_refused() -> None:
    """Two streams each with a request waiting in the batcher (batches wait 3 s for company):
    at max_grpc_calls 2 a new call is refused RESOURCE_EXHAUSTED with retry-after, and both
    streams are answered."""
    async with _served(max_grpc_calls=2, max_queue_delay_ms=3000, max_batch_size=64,
                       idle_dispatch=False) as served:
        async def one_request(number: int) -> AsyncIterator[pb.ModelInferRequest]:
            request = text_request(1)
            request.id = str(number)
            yield request
            await asyncio.Event().wait()  # the stream stays open after its request

        streams = [served.stub.ModelStreamInfer(one_request(n)) for n in range(2)]
        queued = 'ortserve_queue_depth{model="sst2-lstm"} 2.0'
        while queued not in (await served.http.get("/metrics")).text:
            await asyncio.sleep(0.01)
        refused = await failure(served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5))
        answers = [await stream.read() for stream in streams]
        refusals = await served.closed("refused")
        for stream in streams:
            stream.cancel()
    assert refusals == 1
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_grpc_calls (2) calls, each of them working" in refused.details()
    assert ("retry-after", "1") in tuple(refused.trailing_metadata() or ())
    assert sorted(a.infer_response.id for a in answers) == ["0", "1"]
    assert all(not a.error_message for a in answers)


async def test_a_unary_call_whose_message_does_not_come_ends_at_body_timeout() -> None:
    async with _served(body_timeout_s=0.3) as served:
        late = await failure(_live_without_its_message(served.channel))
        live = await served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        counted = await served.closed("message_late")
    assert counted == 1
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert late.details() == "the request's message did not arrive within body_timeout_s (0.3 s)"
    assert live.live


async def test_unary_calls_without_their_message_make_room_at_the_limit() -> None:
    """Three calls waiting for messages that never come fill max_grpc_calls 3 (their
    body_timeout_s far off): a model's inference is answered all the same."""
    async with _served(max_grpc_calls=3, body_timeout_s=600) as served:
        waiting = []
        for _ in range(3):
            waiting.append(_live_without_its_message(served.channel))
            await served.calls_open(len(waiting))
        answered = await served.stub.ModelInfer(text_request(2), timeout=5)
        oldest = await failure(waiting[0])
        for call in waiting[1:]:
            call.cancel()
    assert list(answered.outputs[0].shape) == [2, 2]
    assert oldest.code() == grpc.StatusCode.UNAVAILABLE
    assert "closed while it waited with nothing to do" in oldest.details()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""HTTP/2's client preface and an empty SETTINGS frame: a gRPC connection, no call on it."""


async def test_grpc_connections_beyond_their_bound_are_closed_and_http_is_answered() -> None:
    """Two idle gRPC connections fill max_grpc_connections 2 (their own bound, so that they
    cannot use up the descriptors HTTP needs): a third client cannot connect, HTTP answers,
    and once one of the two goes the client's call is answered."""
    async with _served(max_grpc_connections=2) as served:
        port = served.port
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PREFACE)
            assert await reader.read(9), "refused"  # the server's SETTINGS: it took this connection
            held.append((reader, writer))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            shut_out = await failure(stub.ServerLive(pb.ServerLiveRequest(), timeout=2))
            http = await served.http.get("/v2/health/live")
            held[0][1].close()
            live = await stub.ServerLive(pb.ServerLiveRequest(), timeout=30, wait_for_ready=True)
        for _, writer in held[1:]:
            writer.close()
    assert shut_out.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert http.status_code == 200
    assert live.live


async def test_a_connection_that_never_says_http2_is_closed_after_header_timeout_s() -> None:
    async with _served(header_timeout_s=0.3) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        said = await asyncio.wait_for(reader.read(), 30)  # to the end: the server closed it
        closed = reader.at_eof()
        writer.close()
    assert closed
    assert b"handshake timeout" in said  # gRPC's GOAWAY says why (grpc's default waits 120 s)


async def _answers_handed(served: _Served, count: int) -> None:
    """Until `count` calls have an answer handed to gRPC and not yet taken."""
    while sum(c.handed_at is not None for c in served.book._calls) < count:
        await asyncio.sleep(0.01)


def _three_messages() -> list[bytes]:
    """A stream's three requests, ids 0 to 2."""
    request, messages = text_request(1), []
    for number in range(3):
        request.id = str(number)
        messages.append(request.SerializeToString())
    return messages


async def test_unary_calls_whose_client_takes_no_answer_make_room_after_send_timeout_s() -> None:
    """Four ModelInfer calls from a client that takes no answer fill max_grpc_calls 4, each of
    them working (its answer made and handed to gRPC): before, every new call was refused for
    as long as the connection lasted. Once their answers are send_timeout_s old, a new call
    closes the oldest and is answered. Their answers stay with gRPC (its Python API cannot end
    one call), so the connection may hold no more than max_grpc_calls_per_connection."""
    async with _served(max_grpc_calls=4, max_grpc_calls_per_connection=4, send_timeout_s=0.5) as served:
        client = await RawGrpcClient.to(served.port)
        for _ in range(4):
            await client.call("ModelInfer", text_request(1).SerializeToString())
        await served.calls_open(4)
        await _answers_handed(served, 4)
        await asyncio.sleep(0.6)  # past send_timeout_s
        live = await served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        again = await served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        closed, made_room = await served.closed("answer_late"), await served.closed("make_room")
        await client.receive()
        advertised = client.conn.remote_settings.max_concurrent_streams
        held = client.conn.open_outbound_streams
        client.close()
    assert live.live
    assert again.live
    assert (closed, made_room) == (1, 0)  # the second call found the place the first had made
    assert advertised == 4  # HTTP/2's MAX_CONCURRENT_STREAMS: the connection can open no fifth call
    assert held == 4


async def test_a_stream_whose_client_takes_no_answer_makes_room_after_send_timeout_s() -> None:
    async with _served(max_grpc_calls=1, send_timeout_s=0.5) as served:
        client = await RawGrpcClient.to(served.port)
        await client.call("ModelStreamInfer", *_three_messages(), end=False)  # the client stays
        await served.calls_open(1)
        await _answers_handed(served, 1)
        refused = await failure(served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5))
        await asyncio.sleep(0.6)
        live = await served.stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        closed = await served.closed("answer_late")
        client.close()
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # before send_timeout_s it is working
    assert live.live
    assert closed == 1


async def test_a_stream_read_late_while_there_is_room_gets_every_answer() -> None:
    """An answer not taken within send_timeout_s only makes its call closable: with places to
    spare, a client that reads late gets all its answers and the stream's end."""
    async with _served(send_timeout_s=0.2) as served:
        client = await RawGrpcClient.to(served.port)
        stream = await client.call("ModelStreamInfer", *_three_messages())
        await _answers_handed(served, 1)
        await asyncio.sleep(0.5)  # past send_timeout_s
        await client.open_window(stream)
        await client.until("StreamEnded", stream)
        data = b"".join(e.data for e in client.events if type(e).__name__ == "DataReceived")
        client.close()
    answers = []
    while data:
        size = int.from_bytes(data[1:5], "big")
        answers.append(pb.ModelStreamInferResponse.FromString(data[5:5 + size]))
        data = data[5 + size:]
    assert sorted(a.infer_response.id for a in answers) == ["0", "1", "2"]
    assert all(not a.error_message for a in answers)


async def test_a_unary_call_read_late_while_there_is_room_gets_its_answer() -> None:
    async with _served(send_timeout_s=0.2) as served:
        client = await RawGrpcClient.to(served.port)
        stream = await client.call("ModelInfer", text_request(2).SerializeToString())
        await _answers_handed(served, 1)
        await asyncio.sleep(0.5)  # past send_timeout_s
        await client.open_window(stream)
        ended = await client.until("StreamEnded", stream)
        trailers = next(e for e in client.events if type(e).__name__ == "TrailersReceived")
        answer = b"".join(e.data for e in client.events if type(e).__name__ == "DataReceived")
        client.close()
        closed = await served.closed("answer_late")
    assert ended.stream_id == stream
    assert (b"grpc-status", b"0") in trailers.headers
    reply = pb.ModelInferResponse.FromString(answer[5:])
    assert list(reply.outputs[0].shape) == [2, 2]
    assert closed == 0
