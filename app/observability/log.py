"""Logging set-up (text or JSON lines, written by a thread of their own: log_stream.py) and the
request id carried in a context variable."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from types import TracebackType
from typing import Any

import orjson

from app.errors import StartRefused
from app.observability.log_settings import SWITCHES, UVICORN_LOGGERS, LogSettings, apply
from app.observability.log_stream import ServiceLogHandler

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


_REFUSALS = tuple(f"{kind.__module__}.{kind.__qualname__}: " for kind in StartRefused.__subclasses__())


class _RefusalWithoutTraceback(logging.Filter):
    """A start the service refuses on purpose (--strict-models, no models found) is one line
    with its reason: Starlette hands uvicorn the whole traceback as the startup failure's
    message, which would print the reason twice inside forty lines of framework frames."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and isinstance(record.msg, str) and record.msg.startswith("Traceback"):
            last = record.msg.rstrip().rsplit("\n", 1)[-1]
            refusal = next((prefix for prefix in _REFUSALS if last.startswith(prefix)), None)
            if refusal is not None:
                record.msg, record.args, record.exc_info = last[len(refusal):], None, None
        return True


_CLIENT_LEFT = "ExecuteBatchError raised in core by servicer method "


class _ClientGoneWithoutTraceback(logging.Filter):
    """A gRPC client that leaves while its answer is being written is one INFO line, not an
    ERROR with grpc's traceback: grpc.aio means to ignore the failed write when the client
    has gone, but logs it when the write fails before it has noticed (measured: one ERROR
    per connection closed with answers pending, docs/benchmarks.md). HTTP logs nothing for
    a client that hangs up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "grpc._cython.cygrpc" and isinstance(record.msg, str) and \
                record.msg.startswith(_CLIENT_LEFT):
            method = record.msg[len(_CLIENT_LEFT):]
            record.msg = f"gRPC call ended before its answer was sent (its client left): {method}"
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


class _UvicornRunningOnHttps(logging.Filter):
    """uvicorn's "Uvicorn running on http://..." says https: uvicorn serves the port as plain
    text and the server's own protocol ends TLS on each connection, under its limits."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.name == "uvicorn.error" and isinstance(record.msg, str) and record.msg.startswith("Uvicorn running on")
                and isinstance(record.args, tuple) and record.args[:1] == ("http",)):
            record.args = ("https", *record.args[1:])
        return True


def json_entry(time: str, level: str, logger: str, message: str) -> dict[str, Any]:
    """A JSON log line's first keys, in order: every JSON line's (JsonFormatter's, and the
    access log's, which makes its lines without logging's records)."""
    return {"time": time, "level": level, "logger": logger, "message": message}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = json_entry(self.formatTime(record, JSON_TIME), record.levelname.lower(), record.name,
                           record.getMessage())
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id  # type: ignore[attr-defined]
        fields = getattr(record, "fields", None)  # structured events: logger.info(..., extra={"fields": {...}})
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def formatter(log_format: str) -> logging.Formatter:
    """Every log line's form: text for people, JSON lines for collectors."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_TIME = logging.Formatter.default_time_format
"""asctime's date and time in text lines (logging's own; its milliseconds follow, `,%03d`)."""
JSON_TIME = "%Y-%m-%dT%H:%M:%S"
"""The `time` of JSON lines."""


def configure_logging(log_format: str, level: str, https: bool = False) -> None:
    """Configure the root logger, and uvicorn's loggers to write through it. `https`: the
    server's own protocol ends TLS (app/http/connections.py), which uvicorn does not know.

    uvicorn is then given no log_config of its own (`log_config=None`): applying one
    (logging.config.dictConfig) closes every handler there is, this one's thread with them."""
    handler = ServiceLogHandler(sys.stderr)  # written by a thread of its own: a stuck stderr holds no caller
    handler.addFilter(_RequestIdFilter())
    if https:
        handler.addFilter(_UvicornRunningOnHttps())
    handler.addFilter(_RefusalWithoutTraceback())
    handler.addFilter(_ClientGoneWithoutTraceback())
    handler.addFilter(SWITCHES)  # last: the filters above may change a record's level
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, ServiceLogHandler):  # configured again (tests do): the one replaced ends its thread
            replaced.close()
    root.handlers[:] = [handler]
    for name in UVICORN_LOGGERS:  # through the root handler above instead of their own
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        # uvicorn's access log stays off (the service's own replaces it: access.py): uvicorn
        # writes one wherever its logger has a handler to reach, the root's included
        uvicorn_logger.propagate = name != "uvicorn.access"
    apply(LogSettings.at_level(level, log_format))  # the levels, uvicorn's too
    # Python's warnings (a library's deprecations) and an uncaught exception, the main
    # thread's or another's, as log lines, in the log's form and through its thread, not text
    # of their own on stderr that a JSON-lines collector cannot parse
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_failure
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], failure: BaseException, trace: TracebackType | None) -> None:
    """The main thread's uncaught exception, as its last log line: written before the process
    ends, since the log's thread is drained at exit (app/observability/log_stream.py). Ctrl-C
    stays Python's own."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, failure, trace)
        return
    logging.getLogger(__name__).critical("the process ends on an uncaught exception", exc_info=(kind, failure, trace))


def _log_thread_failure(failure: threading.ExceptHookArgs) -> None:
    if failure.exc_type is SystemExit:  # as threading's own hook: a thread's exit, not a failure
        return
    name = failure.thread.name if failure.thread is not None else "?"
    logging.getLogger(__name__).error("thread %s ended by an uncaught exception", name, exc_info=failure.exc_value)
