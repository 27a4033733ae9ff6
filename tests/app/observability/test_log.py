"""Structured logs: JSON lines carrying the request id of the request being served."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.observability.log import JsonFormatter, _RequestIdFilter, configure_logging, request_id


def test_json_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("req-7")
    try:
        logger.warning("queue %s is full", "m")
    finally:
        request_id.reset(token)
    logger.warning("outside a request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "queue m is full"
    assert first["request_id"] == "req-7"
    assert first["level"] == "warning"
    assert first["logger"] == "test.json"
    assert "request_id" not in second


async def test_each_model_state_change_is_one_structured_log_line(model_root, caplog) -> None:  # type: ignore[no-untyped-def]
    from tests.app.conftest import serving
    from tests.conftest import model_folder

    caplog.set_level("INFO", logger="app.repository")
    async with serving(model_dir=model_root, model_control_mode="explicit", load_model=["sst2-lstm"]):
        pass
    events = [(r.fields["state"], r.fields["model"], r.fields["version"])  # type: ignore[attr-defined]
              for r in caplog.records if getattr(r, "fields", None)]
    v = model_folder("sst2-lstm").name  # the fixture copies the newest version
    assert events == [("LOADING", "sst2-lstm", v), ("READY", "sst2-lstm", v),
                      ("UNLOADING", "sst2-lstm", v), ("UNAVAILABLE", "sst2-lstm", v)]
    line = JsonFormatter().format(next(r for r in caplog.records if getattr(r, "fields", None)))
    assert json.loads(line) | {"time": ""} == {
        "time": "", "level": "info", "logger": "app.repository", "message": f"model sst2-lstm version {v}: LOADING",
        "event": "model_state", "model": "sst2-lstm", "version": v, "state": "LOADING", "reason": ""}


def _logged(monkeypatch: pytest.MonkeyPatch, log_format: str, level: str, log: Callable[[], None]) -> list[str]:
    """The lines the server's logging (configure_logging) writes for what `log()` logs."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # put back after
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        configure_logging(log_format, level)
        log()
    finally:
        logging.captureWarnings(False)
        for handler in root.handlers:
            handler.close()  # every line written
        root.handlers[:] = handlers
        root.setLevel(root_level)
    return stream.getvalue().splitlines()


def _the_json_line(monkeypatch: pytest.MonkeyPatch, log: Callable[[], None]) -> dict[str, Any]:
    """The one JSON line the server's logging writes for what `log()` does."""
    [line] = _logged(monkeypatch, "json", "info", log)
    entry: dict[str, Any] = json.loads(line)
    return entry


def _logged_by_grpc(monkeypatch: pytest.MonkeyPatch, log_format: str, level: str) -> list[str]:
    """The lines the server's logging writes for grpc.aio's two records: a write that failed
    as the client left (ExecuteBatchError), and a handler's own error."""
    from grpc._cython.cygrpc import ExecuteBatchError

    grpc_log = logging.getLogger("grpc._cython.cygrpc")  # grpc.aio's server logs under this name

    def log() -> None:
        try:
            raise ExecuteBatchError('Failed "execute_batch"')
        except ExecuteBatchError:
            method = "/inference.GRPCInferenceService/ModelInfer"
            grpc_log.exception(f"ExecuteBatchError raised in core by servicer method [{method}]")  # formatted, as grpc does
        try:
            raise ValueError("a fault")
        except ValueError:
            grpc_log.exception("Unexpected [ValueError] raised by servicer method [/inference.GRPCInferenceService/ModelInfer]")

    return _logged(monkeypatch, log_format, level, log)


def test_a_grpc_client_that_left_mid_answer_is_one_info_line_and_other_grpc_errors_keep_their_traceback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    left, fault = (json.loads(line) for line in _logged_by_grpc(monkeypatch, "json", "info"))
    assert left == {"time": left["time"], "level": "info", "logger": "grpc._cython.cygrpc",
                    "message": "gRPC call ended before its answer was sent (its client left): "
                               "[/inference.GRPCInferenceService/ModelInfer]"}
    assert fault["level"] == "error"
    assert "ValueError: a fault" in fault["exception"]


def test_a_grpc_client_that_left_is_not_logged_below_info(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _logged_by_grpc(monkeypatch, "text", "warning")
    assert not any("ExecuteBatchError" in line or "its client left" in line for line in lines)
    assert "ERROR grpc._cython.cygrpc: Unexpected [ValueError]" in lines[0]
    assert "Traceback" in "\n".join(lines)


def test_a_python_warning_is_a_log_line_in_the_log_s_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not text of its own on stderr, which a collector reading JSON lines cannot parse (and
    which would wait on a stuck stream: app/observability/log_stream.py)."""
    def warn() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's warning", DeprecationWarning, stacklevel=1)

    entry = _the_json_line(monkeypatch, warn)
    assert (entry["level"], entry["logger"]) == ("warning", "py.warnings")
    assert "DeprecationWarning: a library's warning" in entry["message"]


def test_a_thread_s_uncaught_exception_is_a_log_line_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise ValueError("a fault in a thread")

    def run() -> None:
        thread = threading.Thread(target=fail, name="failing")
        thread.start()
        thread.join()

    entry = _the_json_line(monkeypatch, run)
    assert (entry["level"], entry["message"]) == ("error", "thread failing ended by an uncaught exception")
    assert "ValueError: a fault in a thread" in entry["exception"]


def test_the_main_thread_s_uncaught_exception_is_the_process_s_last_log_line() -> None:
    """Written through the log's thread before the process ends, in the log's form: under
    JSON lines, not a bare traceback a collector cannot parse."""
    script = ("from app.observability.log import configure_logging\n"
              "configure_logging('json', 'info')\n"
              "raise RuntimeError('a fault at start')\n")
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[3])
    assert ended.returncode == 1
    [line] = ended.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["message"]) == ("critical", "the process ends on an uncaught exception")
    assert "RuntimeError: a fault at start" in entry["exception"]


def test_ctrl_c_stays_python_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "__excepthook__", lambda kind, failure, trace: seen.append(kind))

    def interrupted() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]

    assert _logged(monkeypatch, "json", "info", interrupted) == []
    assert seen == [KeyboardInterrupt]


def test_a_log_call_whose_arguments_do_not_fit_is_reported_as_a_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not logging's own report, text written to stderr on the calling thread."""
    entry = _the_json_line(monkeypatch, lambda: logging.getLogger("a.library").info("%d rows", "many"))
    assert (entry["level"], entry["logger"]) == ("error", "ortserve.log")
    assert entry["message"] == "a log line of a.library could not be written: message '%d rows', arguments ('many',)"
    assert "TypeError" in entry["exception"]
