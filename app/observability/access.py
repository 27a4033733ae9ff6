"""The access log: one structured line per request, with the batch it rode in.

Each line says method, route (its template: `/v2/models/{name}/infer`), status, model and
version, bytes in and out, total, queue and compute milliseconds, the batch's id, rows and
why it ran (idle, full, due), how many batches a split request took, the request id, the
W3C trace id a client sent in `traceparent`, and the client's address. In JSON with
`log_format json` (its fields at the top level), `key=value` pairs otherwise.

The event loop only puts a record on a queue; a thread of its own formats and writes it
(logging's QueueListener), so neither the JSON encoding nor a slow stderr holds requests
up. With `access_log_sample` below 1 only that fraction of successful requests is written;
every request answered 4xx or 5xx is.
"""

from __future__ import annotations

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

__all__ = ["AccessLog", "RequestTiming", "request_timing", "trace_id"]

LOGGER = "ortserve.access"
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
        self._queue: queue.SimpleQueue[tuple[float, dict[str, Any]]] = queue.SimpleQueue()
        handler = _UnflushedStream(stream or sys.stderr)
        handler.setFormatter(formatter(log_format))
        self._listener = _Writer(self._queue, handler, self.json)
        self._running = False

    def start(self) -> None:
        self._listener.start()
        self._running = True

    def stop(self) -> None:
        """Every line queued is written first. Once: a second call does nothing (QueueListener's
        own stop fails when it is not running)."""
        if self._running:
            self._listener.stop()
            self._running = False

    def write(self, fields: dict[str, Any]) -> None:
        """Queue one request's line: on the event loop, only the queueing (the log record is
        made, formatted and written by the writing thread)."""
        if self.sample < 1.0 and fields["status"] < 400 and self._draw() >= self.sample:
            return
        self._queue.put_nowait((time.time(), fields))


class _UnflushedStream(logging.StreamHandler):
    """Writes without flushing each line: _Writer flushes once the queue is empty, so a burst
    of requests is one write to the stream rather than one per line."""

    def flush(self) -> None:
        pass

    def flush_now(self) -> None:
        super().flush()


class _Writer(QueueListener):
    """The writing thread: each queued (time, fields) made a log record, formatted, written."""

    def __init__(self, lines: queue.SimpleQueue[tuple[float, dict[str, Any]]], handler: _UnflushedStream,
                 as_json: bool) -> None:
        super().__init__(lines, handler)
        self.lines, self.stream, self.as_json = lines, handler, as_json

    def prepare(self, item: Any) -> logging.LogRecord:
        created, fields = item
        if self.as_json:
            message: object = f"{fields['method']} {fields['route']} {fields['status']}"
        else:
            message = _Line(fields)
        record = logging.LogRecord(LOGGER, logging.INFO, __file__, 0, message, None, None)
        record.created, record.msecs = created, (created % 1) * 1000
        record.fields = {name: fields.get(name) for name in FIELDS}
        return record

    def handle(self, record: Any) -> None:
        super().handle(record)
        if self.lines.empty():
            self.stream.flush_now()

    def stop(self) -> None:
        super().stop()
        self.stream.flush_now()  # the lines before the stop's sentinel


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
