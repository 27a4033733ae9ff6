"""The one inference path: a request's body decoded against a model, run through its
batcher, and its answer encoded, with one rule for what runs off the event loop. V1 and V2
(and any later protocol) differ only in their `Exchange`; the transport (app/http) reads
the body and holds the model's lease around this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from app.codecs import Codec
from app.errors import ParseElsewhere
from app.manifest import Manifest
from app.offload import HEAVY_BODY_BYTES, Offload
from app.sequences import SequenceFlags
from app.served_model import ServedModel

Answer = TypeVar("Answer", covariant=True)


class Exchange(Protocol[Answer]):
    """What one protocol does with a request. `parse` reads the body; `decode` makes the
    model's input tensors, checked whole, and returns what the answer needs of the
    request (`kept`); the rest of the request is dropped before the model runs."""

    def parse(self, body: Any) -> Any:
        """The request from its body: bytes over HTTP, the transport's message over gRPC."""
        ...

    def heavy(self, parsed: Any, codec: Codec) -> bool:
        """Whether decoding is too much work for the event loop although the body is small."""
        ...

    def decode(self, parsed: Any, manifest: Manifest, codec: Codec) -> tuple[Any, dict[str, np.ndarray]]: ...

    def timeout_s(self, kept: Any) -> float | None:
        """The timeout the request itself asks for, in seconds (None: none)."""
        ...

    def priority(self, kept: Any) -> int:
        """The priority the request asks for (Triton's: 1 the highest; 0: the model's default)."""
        ...

    def sequence(self, kept: Any) -> SequenceFlags | None:
        """What the request says of its sequence, asked of requests to a stateful model only."""
        ...

    def answer_bytes(self, kept: Any, manifest: Manifest, rows: int,
                     outputs: dict[str, np.ndarray] | None = None) -> int:
        """The most bytes the answer takes: before computing from the declared shapes, then
        (where an output's shape is dynamic) exactly from the computed `outputs`."""
        ...

    def answer(self, kept: Any, manifest: Manifest, outputs: dict[str, np.ndarray]) -> Answer: ...


class Limits(Protocol):
    """What a request may cost, as the transport enforces it (app/http/budget.py)."""

    def deadline_from(self, arrived: float, requested_s: float | None) -> tuple[float, float]:
        """(due as time.monotonic(), timeout in seconds) for a request that arrived at
        `arrived` and asks for `requested_s` (None: the server's timeout)."""
        ...

    def check_response(self, size_bound: int, rows: int) -> None:
        """Raise for an answer that could take more than the limit."""
        ...


async def run_inference(model: ServedModel, body: Any, exchange: Exchange[Answer], limits: Limits,
                        offload: Offload, arrived: float, timeout_s: float | None = None,
                        client_gone: Callable[[], bool] | None = None, body_bytes: int | None = None,
                        others_on_the_way: bool = False, in_flight_beside: int = 0) -> Answer:
    """Decode, infer, encode one request that arrived at `arrived` (time.monotonic()).
    Its deadline: the timeout the protocol asks for, else `timeout_s` (the transport's, a
    header say), at most the server's. Off the event loop: decoding a body over
    HEAVY_BODY_BYTES (its parse and tensors in one hop) or one the exchange calls heavy,
    and encoding an answer that large. The body, the parsed request and the inputs are
    dropped as soon as they are used, before the answer is built. Plain arguments, no
    object per request: this is every request's path. `body_bytes`: the size of a body that is
    not bytes (a gRPC message, parsed by the transport). `others_on_the_way`: for a transport
    whose requests reach the model one at a time rather than together; `in_flight_beside`: the
    client's other requests the transport knows are in flight (both: ServedModel.infer)."""
    manifest, codec = model.manifest, model.codec
    if (len(body) if body_bytes is None else body_bytes) > HEAVY_BODY_BYTES:
        kept, inputs = await offload.run(_decode, exchange, body, manifest, codec)
    else:
        try:
            parsed = exchange.parse(body)
        except ParseElsewhere:  # NaN or Infinity in a mid-sized body: a slow parse, as a large body's
            kept, inputs = await offload.run(_decode, exchange, body, manifest, codec)
        else:
            if exchange.heavy(parsed, codec):
                kept, inputs = await offload.run(exchange.decode, parsed, manifest, codec)
            else:
                kept, inputs = exchange.decode(parsed, manifest, codec)
            del parsed
    del body
    rows = len(next(iter(inputs.values())))
    size = exchange.answer_bytes(kept, manifest, rows)
    limits.check_response(size, rows)
    asked = exchange.timeout_s(kept)
    due, timeout = limits.deadline_from(arrived, asked if asked is not None else timeout_s)
    outputs = await model.infer(inputs, due, timeout, client_gone, others_on_the_way, in_flight_beside,
                                exchange.priority(kept),
                                exchange.sequence(kept) if model.sequences is not None else None)
    del inputs
    if not model.outputs_fixed:  # a dynamic output axis: the answer's size is known only now
        size = exchange.answer_bytes(kept, manifest, rows, outputs)
        limits.check_response(size, rows)
    if size > HEAVY_BODY_BYTES:  # as large bodies are decoded
        return await offload.run(exchange.answer, kept, manifest, outputs)
    return exchange.answer(kept, manifest, outputs)


def _decode(exchange: Exchange[Any], body: Any, manifest: Manifest, codec: Codec
            ) -> tuple[Any, dict[str, np.ndarray]]:
    return exchange.decode(exchange.parse(body), manifest, codec)
