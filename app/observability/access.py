"""The access log: one structured line per request, with the batch it rode in.

Each line says method, route (its template: `/v2/models/{name}/infer`), status, model and
version, bytes in and out, total, queue and compute milliseconds, the batch's id, rows and
why it ran (idle, full, due), how many batches a split request took, the request id, the
W3C trace id a client sent in `traceparent`, and the client's address. In JSON with
`log_format json` (its fields at the top level), `key=value` pairs otherwise.

The event loop keeps each request's fields; every HANDOVER_S it formats those it kept and
hands them as one text to a thread of its own, which writes it (logging's QueueListener),
so a slow or blocked stderr never holds requests up, and the formatting, done in bulk
outside any request, never holds the GIL against the loop. With `access_log_sample` below
1 only that fraction of successful requests is written; every request answered 4xx or 5xx
(every gRPC call not OK) is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import re
import sys
import time
from collections.abc import Callable
from logging.handlers import QueueListener
from typing import Any

from app.batching.request import RequestTiming, request_timing
from app.observability.log import formatter

__all__ = ["AccessLog", "RequestTiming", "line", "request_timing", "trace_id"]

LOGGER = "ortserve.access"
HANDOVER_S = 0.05
"""How long the event loop keeps lines before handing them to the writing thread at once."""
FIELDS = ("method", "route", "status", "model", "version", "bytes_in", "bytes_out", "total_ms", "queue_ms",
          "compute_ms", "batch_id", "batch_rows", "batches", "trigger", "request_id", "trace_id", "client")
"""Every line's fields, in this order (an unknown one is null in JSON, left out in text)."""


class _Line:
    """A text line's message, built in the writing thread (str() is called there)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{name}={_text(self.fields.get(name))}" for name in FIELDS
                        if self.fields.get(name) not in (None, ""))


def _text(value: object) -> str:
    """A value as it goes in a text line: quoted and escaped (JSON's rules) where it holds a
    space, a quote, an equals sign or a control character, so one request is one line even
    when a client's path decodes to a newline."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text.isprintable() or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


class AccessLog:
    def __init__(self, log_format: str, sample: float = 1.0, stream: Any = None,
                 draw: Callable[[], float] = random.random) -> None:
        """`stream`: where lines go (stderr unless given); `draw`: the sampling's random numbers."""
        self.json = log_format == "json"
        self.sample = sample
        self._draw = draw
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._handover: asyncio.TimerHandle | None = None
        self._format = formatter(log_format).format
        self._listener = _Writer(self._queue, stream or sys.stderr)
        self._running = False

    def start(self) -> None:
        self._listener.start()
        self._running = True

    def stop(self) -> None:
        """Every line kept is written first. Once: a second call does nothing (QueueListener's
        own stop fails when it is not running)."""
        if self._handover is not None:
            self._handover.cancel()
        self._hand_over()
        if self._running:
            self._listener.stop()
            self._running = False

    def write(self, fields: dict[str, Any]) -> None:
        """Keep one request's line. Every HANDOVER_S the lines kept are formatted, on the loop,
        and handed to the writing thread as one text: a thread woken and formatting per line
        took a quarter of the throughput at c64 (docs/benchmarks.md)."""
        if self.sample < 1.0 and not _failed(fields["status"]) and self._draw() >= self.sample:
            return
        self._pending.append((time.time(), fields))
        if self._handover is None:
            try:
                self._handover = asyncio.get_running_loop().call_later(HANDOVER_S, self._hand_over)
            except RuntimeError:  # not on a loop (a thread of its own, a test): at once
                self._hand_over()

    def _hand_over(self) -> None:
        """The kept lines, formatted here and written by the thread: formatting is Python's
        work and the GIL's whichever thread does it, and a thread formatting holds the GIL
        for its whole switch interval each time the loop lets go of it (in a socket call, in
        ONNX Runtime's run), so the loop would wait on it; writing lets go of the GIL."""
        self._handover = None
        if self._pending:
            lines, self._pending = self._pending, []
            self._queue.put_nowait("".join(self._format(self._record(created, fields)) + "\n"
                                           for created, fields in lines))

    def _record(self, created: float, fields: dict[str, Any]) -> logging.LogRecord:
        if self.json:
            message: object = f"{fields['method']} {fields['route']} {fields['status']}"
        else:
            message = _Line(fields)
        record = logging.LogRecord(LOGGER, logging.INFO, __file__, 0, message, None, None)
        record.created, record.msecs = created, (created % 1) * 1000
        record.fields = {name: fields.get(name) for name in FIELDS}
        return record


def line(method: str, route: str, status: int | str, model: str | None, timing: RequestTiming,
         request_id: str | None, traceparent: bytes | None, client: str | None, total_s: float) -> dict[str, Any]:
    """One request's fields (FIELDS), for every transport: the batch facts from its timing;
    its trace id the trace's where traced, else the one its caller sent."""
    ran = timing.batches > 0
    return {
        "method": method, "route": route, "status": status, "model": model, "version": timing.version or None,
        "bytes_in": timing.bytes_in, "bytes_out": timing.bytes_out, "total_ms": round(total_s * 1000, 3),
        "queue_ms": round(timing.queue_s * 1000, 3) if ran else None,
        "compute_ms": round(timing.compute_s * 1000, 3) if ran else None,
        "batch_id": timing.batch_id or None, "batch_rows": timing.batch_rows or None, "batches": timing.batches or None,
        "trigger": timing.trigger or None, "request_id": request_id,
        "trace_id": timing.trace_id or trace_id(traceparent), "client": client}


def _failed(status: int | str) -> bool:
    """An HTTP status of 400 or more, or a gRPC code other than OK."""
    return status >= 400 if isinstance(status, int) else status != "OK"


class _Writer(QueueListener):
    """The writing thread: each handed-over text written and flushed, one write per
    handover. (QueueListener for its thread, its queue and its stop that drains the queue.)"""

    def __init__(self, texts: queue.SimpleQueue[str], stream: Any) -> None:
        super().__init__(texts)
        self.stream = stream

    def handle(self, record: Any) -> None:
        try:
            self.stream.write(record)
            self.stream.flush()
        except (OSError, ValueError):  # the stream closed or broken: lines are lost, requests are not
            pass


def trace_id(traceparent: bytes | None) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); None for
    none or a malformed one (which is also what the standard says to ignore)."""
    if traceparent is None or len(traceparent) < 55:
        return None
    parts = traceparent.split(b"-")
    if len(parts) < 4 or not _TRACE_ID.fullmatch(parts[1]) or parts[1] == b"0" * 32:
        return None
    return parts[1].decode("ascii")


_TRACE_ID = re.compile(rb"[0-9a-f]{32}")
