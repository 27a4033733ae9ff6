"""gRPC keepalive (app/grpc/server.py `keepalive_options`): a client that pings to keep its
connection alive keeps its idle streams (gRPC core's own floor of 5 minutes ended them with
too_many_pings), and a client that vanished without closing (it answers no ping) is closed
after grpc_keepalive_s instead of holding its calls for hours."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from load_tests.h2_client import RawGrpcClient
from tests.app.conftest import serving_grpc
from tests.app.grpc.test_grpc_behaviour import text_request

PINGING_CLIENT = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
                  ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
"""A client keeping its connection alive with a ping a second, calls or none."""


async def _stream_after_idle(port: int, idle_s: float) -> tuple[Any, Any]:
    """A stream's answer, then, after `idle_s` with nothing sent, the same stream's next answer
    (or what ended it)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=PINGING_CLIENT) as channel:
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        await stream.write(text_request(1))
        first = await stream.read()
        await asyncio.sleep(idle_s)
        try:
            await stream.write(text_request(1))
            later = await asyncio.wait_for(stream.read(), 10)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            later = e
        stream.cancel()
    return first, later


@pytest.mark.parametrize(("client_ping_s", "kept"), [(0.5, True), (300, False)])
async def test_a_stream_of_a_client_that_pings_is_kept_where_its_pings_are_allowed(client_ping_s: float,
                                                                                    kept: bool) -> None:
    """300 s is gRPC's and Triton's floor: there the idle stream ends at the third ping."""
    async with serving_grpc(grpc_client_ping_s=client_ping_s) as (_, _, app):
        first, later = await _stream_after_idle(app.grpc_server.port, 4.0)
    assert not first.error_message, first.error_message
    if kept:
        assert not isinstance(later, BaseException), later
        assert later.infer_response.outputs, later
    else:
        assert isinstance(later, BaseException) or later is grpc.aio.EOF, later


@pytest.mark.parametrize(("keepalive_s", "closed"), [(0.5, True), (0, False)])
async def test_a_client_that_answers_no_ping_is_closed_after_grpc_keepalive_s(keepalive_s: float,
                                                                              closed: bool) -> None:
    """A stream opened and left, by a client that reads nothing more (so acknowledges no ping):
    as a vanished host or a dropped NAT mapping looks from the server."""
    async with serving_grpc(grpc_keepalive_s=keepalive_s) as (_, _, app):
        client = await RawGrpcClient.to(app.grpc_server.port)
        await client.call("ModelStreamInfer", end=False)
        try:
            said = await asyncio.wait_for(client.reader.read(-1), 5)  # to the end: the server closed it
        except TimeoutError:
            said = None
        client.close()
    if closed:
        assert said is not None, "still open"
        assert b"keepalive" in said.lower() or client.reader.at_eof(), said
    else:
        assert said is None, "closed without keepalive"
