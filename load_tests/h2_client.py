"""A gRPC client over raw HTTP/2 (h2) that does what gRPC's own clients never do: take no
answer (its streams' flow-control window left at 0, so the server cannot send an answer's
bytes until it is opened), or open streams and reset them at once (HTTP/2's "rapid reset").
For the hostile cases (load_tests/hostile.py) and the tests (tests/app/grpc/test_grpc_calls.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.settings

SERVICE_PATH = "/inference.GRPCInferenceService/"


class RawGrpcClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.events: list[Any] = []

    @classmethod
    async def to(cls, port: int, window: int = 0) -> RawGrpcClient:
        """A connection to 127.0.0.1:`port` whose streams take `window` bytes of answer (0: none)."""
        client = cls(*await asyncio.open_connection("127.0.0.1", port), window)
        await client.flush()
        return client

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    def _open(self, method: str) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", SERVICE_PATH + method),
                                        (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
                                        ("te", "trailers")])
        return stream

    async def call(self, method: str, *messages: bytes, end: bool = True) -> int:
        """A call with these request messages (gRPC-framed here); its stream's id."""
        stream = self._open(method)
        framed = b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in messages)
        while self.conn.local_flow_control_window(stream) < len(framed):
            await self.receive()  # the server's window updates, as it reads the earlier calls
        self.conn.send_data(stream, framed, end_stream=end)
        await self.flush()
        return stream

    def room(self) -> bool:
        """Whether the server's stream limit (MAX_CONCURRENT_STREAMS) lets this connection open another."""
        return self.conn.open_outbound_streams < self.conn.remote_settings.max_concurrent_streams

    async def reset_at_once(self, method: str, count: int) -> None:
        """`count` calls, each reset (CANCEL) as soon as it is opened."""
        for _ in range(count):
            stream = self._open(method)
            self.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        await self.flush()

    async def open_window(self, stream: int) -> None:
        self.conn.increment_flow_control_window(1 << 20, stream_id=stream)
        await self.flush()

    async def receive(self, timeout_s: float = 30) -> None:
        """What the server has sent since (waiting for some), as h2's events."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.events.extend(self.conn.receive_data(data))
        await self.flush()  # h2 acknowledges settings and pings

    async def until(self, kind: str, stream: int) -> Any:
        """The first event of h2's `kind` (StreamEnded, DataReceived, ...) on `stream`."""
        while True:
            for event in self.events:
                if type(event).__name__ == kind and getattr(event, "stream_id", None) == stream:
                    return event
            await self.receive()

    def close(self) -> None:
        self.writer.close()
