"""The access log: one structured line per request, with the batch it rode in.

Each line says method, route (its template: `/v2/models/{name}/infer`), status, model and
version, bytes in and out, total, queue and compute milliseconds, the batch's id, rows and
why it ran (idle, full, due), how many batches a split request took, the request id, the
W3C trace id a client sent in `traceparent`, the client's address, and under mutual TLS the
subject of its certificate. In JSON with
`log_format json` (its fields at the top level), `key=value` pairs otherwise.

The event loop keeps each request's fields; every HANDOVER_S it formats those it kept and
hands them as one text to a thread of its own, which writes it (log_stream.LineWriter),
so a slow or blocked stderr never holds requests up, and the formatting, done in bulk
outside any request, never holds the GIL against the loop. What waits for the thread is
bounded (BACKLOG_CHARS): while a stream takes nothing (a log reader stuck, a pipe nobody
reads), the lines past it are dropped and counted, and a line says how many once it takes
lines again; kept, they grew a worker by 1.1 MB a second at 6,000 requests a second, without
end (docs/benchmarks.md). With `access_log_sample` below
1 only that fraction of successful requests is written; every request answered 4xx or 5xx
(every gRPC call not OK) is.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from app.batching.request import RequestTiming, request_timing
from app.observability.log import JSON_TIME, TEXT_TIME, json_entry
from app.observability.log_stream import LineWriter

__all__ = ["AccessLog", "RequestTiming", "line", "request_timing", "trace_id"]

LOGGER = "ortserve.access"
HANDOVER_S = 0.05
"""How long the event loop keeps lines before handing them to the writing thread at once."""
BACKLOG_CHARS = 8 * 1024 * 1024
"""At most this much text handed to the writing thread and not yet written: some seconds of
lines at full load, past which a stream that takes nothing would only grow the server."""
FIELDS = ("method", "route", "status", "model", "version", "bytes_in", "bytes_out", "total_ms", "queue_ms",
          "compute_ms", "batch_id", "batch_rows", "batches", "trigger", "priority", "sequence_id", "request_id",
          "trace_id", "client", "client_cert")
"""Every line's fields, in this order (an unknown one is null in JSON, left out in text)."""


def _message(fields: dict[str, Any]) -> str:
    """A text line's message: `name=value` for each field set, in FIELDS' order."""
    return " ".join([f"{name}={_text(value)}" for name in FIELDS if (value := fields.get(name)) is not None
                     and value != ""])


def _text(value: object) -> str:
    """A value as it goes in a text line: quoted and escaped (JSON's rules) where it holds a
    space, a quote, an equals sign or a control character, so one request is one line even
    when a client's path decodes to a newline."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text.isprintable() or " " in text or '"' in text or "=" in text:
        return json.dumps(text)
    return text


class _Stamps:
    """The time at the start of a line, as the service's other log lines have it
    (app/observability/log.py's formatters: logging's asctime, `2026-12-05 17:20:14,226`,
    in text; seconds only in JSON). The date and time to the second is made once for every
    line of that second, not per line as logging does (tests/app/observability/
    test_access_log.py compares the lines with what logging itself writes)."""

    __slots__ = ("_second", "_made", "_format")

    def __init__(self, date_format: str) -> None:
        self._second = -1
        self._made = ""
        self._format = date_format

    def of(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._made = second, time.strftime(self._format, time.localtime(created))
        return self._made


class AccessLog:
    def __init__(self, log_format: str, sample: float = 1.0, stream: Any = None,
                 draw: Callable[[], float] = random.random, backlog_chars: int = BACKLOG_CHARS,
                 dropped: Callable[[int], object] | None = None) -> None:
        """`stream`: where lines go (stderr unless given); `draw`: the sampling's random numbers;
        `dropped`: told how many lines were dropped each time some are (a metric's inc)."""
        self.json = log_format == "json"
        self.sample = sample
        self._draw = draw
        self.backlog_chars = backlog_chars
        self._dropped = dropped
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._handover: asyncio.TimerHandle | None = None
        self._stamps = _Stamps(JSON_TIME if self.json else TEXT_TIME)
        self._listener = LineWriter(stream or sys.stderr)

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        """Every line kept is written first, waiting while the stream takes lines, until it
        has taken nothing for STOP_WAIT_S or stayed behind for STOP_WITHIN_S
        (app/observability/log_stream.py). Once: a second call does nothing."""
        if self._handover is not None:
            self._handover.cancel()
        self._hand_over()
        self._listener.stop()

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
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        if not self._listener.room(self.backlog_chars, len(lines)):  # the stream takes nothing: not even formatted
            if self._dropped is not None:
                self._dropped(len(lines))
            return
        made = self._json_line if self.json else self._text_line
        self._listener.hand("".join([made(created, fields) for created, fields in lines]), self._dropped_line)

    def _dropped_line(self, lines: int) -> str:
        """How many lines were dropped, as a line of this log."""
        created = time.time()
        message = (f"{lines} access log lines dropped: more than {self.backlog_chars:,} characters were waiting "
                   "for the log's stream to take them")
        if self.json:
            entry = json_entry(self._stamps.of(created), "warning", LOGGER, message)
            entry["dropped"] = lines
            return orjson.dumps(entry).decode() + "\n"
        # _text_line's head, written out in each: a shared helper measured 0.4-1.5 µs more per
        # request's line, and this line is written once per gap
        return f"{self._stamps.of(created)},{int((created % 1) * 1000):03d} WARNING {LOGGER}: {message}\n"

    def _text_line(self, created: float, fields: dict[str, Any]) -> str:
        # logging's TEXT_FORMAT, `%(asctime)s %(levelname)s %(name)s: %(message)s`, with its
        # asctime's milliseconds (`,%03d`)
        return f"{self._stamps.of(created)},{int((created % 1) * 1000):03d} INFO {LOGGER}: {_message(fields)}\n"

    def _json_line(self, created: float, fields: dict[str, Any]) -> str:
        entry = json_entry(self._stamps.of(created), "info", LOGGER,
                           f"{fields['method']} {fields['route']} {fields['status']}")
        entry.update({name: fields.get(name) for name in FIELDS})
        return orjson.dumps(entry).decode() + "\n"


def line(method: str, route: str, status: int | str, model: str | None, timing: RequestTiming,
         request_id: str | None, traceparent: bytes | None, client: str | None, total_s: float,
         client_cert: str | None = None) -> dict[str, Any]:
    """One request's fields (FIELDS), for every transport: the batch facts from its timing;
    its trace id the trace's where traced, else the one its caller sent; `client_cert`: the
    subject of the certificate the client presented (mutual TLS), as RFC 4514 writes it."""
    ran = timing.batches > 0
    return {
        "method": method, "route": route, "status": status, "model": model, "version": timing.version or None,
        "bytes_in": timing.bytes_in, "bytes_out": timing.bytes_out, "total_ms": round(total_s * 1000, 3),
        "queue_ms": round(timing.queue_s * 1000, 3) if ran else None,
        "compute_ms": round(timing.compute_s * 1000, 3) if ran else None,
        "batch_id": timing.batch_id or None, "batch_rows": timing.batch_rows or None, "batches": timing.batches or None,
        "trigger": timing.trigger or None, "priority": timing.priority or None, "sequence_id": timing.sequence_id,
        "request_id": request_id,
        "trace_id": timing.trace_id or trace_id(traceparent), "client": client, "client_cert": client_cert}


def _failed(status: int | str) -> bool:
    """An HTTP status of 400 or more, or a gRPC code other than OK."""
    return status >= 400 if isinstance(status, int) else status != "OK"


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
