"""The service log written by a thread of its own: a stream that takes nothing holds no caller."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import generate_latest

from app.observability.log import formatter
from app.observability.log_stream import LOGGER, LineWriter, ServiceLogHandler
from app.observability.metrics import Metrics
from load_tests import samples
from load_tests.server import ServerProcess, free_port
from load_tests.stats import sample_total
from tests.app.conftest import wait_for
from tests.conftest import MODELS, ROOT


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full, as a log reader that stopped leaves it: (read end, write end)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4095 + b"\n")
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def read_all(fd: int) -> bytes:
    """What is in the pipe and whatever comes into it until every write end is closed."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def in_thread(work: object) -> bool:
    """Whether `work()` returned (within a minute: a bound on a hang, not a measure of speed)."""
    thread = threading.Thread(target=work, daemon=True)  # type: ignore[arg-type]
    thread.start()
    thread.join(60)
    return not thread.is_alive()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test.log_stream")
    logger.propagate, logger.level = False, logging.INFO
    yield logger
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate, logger.level = True, logging.NOTSET


def test_a_stream_that_takes_nothing_holds_no_caller_and_the_lines_past_the_backlog_are_dropped_and_said(
        logger: logging.Logger) -> None:
    read_end, write_end = full_pipe()
    stream = os.fdopen(write_end, "w")
    handler = ServiceLogHandler(stream, backlog_chars=20_000)
    handler.setFormatter(formatter("json"))
    logger.addHandler(handler)
    sent = 2_000  # ~100 chars each: several times what the backlog holds

    assert in_thread(lambda: [logger.info("line %d", n) for n in range(sent)]), "logging waits for nobody"
    dropped = handler.dropped
    assert 0 < dropped < sent

    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_all(read_end)))
    reader.start()  # the stream takes lines again
    wait_for(handler._writer.drained)  # what waited, written
    logger.info("after")
    logger.removeHandler(handler)
    handler.close()
    stream.close()
    reader.join(60)
    os.close(read_end)

    lines = [line for line in received[0].splitlines() if not line.startswith(b"xxxx")]  # the pipe's filling
    entries = [json.loads(line) for line in lines]  # every line whole
    notice = [e for e in entries if e["level"] == "warning"]
    assert notice == [{"time": notice[0]["time"], "level": "warning", "logger": LOGGER, "dropped": dropped,
                       "message": f"{dropped} log lines dropped: more than 20,000 characters were waiting for the "
                                  "log's stream to take them"}]
    kept = sent - dropped
    assert [e["message"] for e in entries if e["level"] == "info"] == [f"line {n}" for n in range(kept)] + ["after"]
    assert entries.index(notice[0]) == kept  # said where the lines are missing


def test_closing_on_a_stream_that_takes_nothing_returns(logger: logging.Logger) -> None:
    read_end, write_end = full_pipe()
    stream = os.fdopen(write_end, "w")
    handler = ServiceLogHandler(stream)
    logger.addHandler(handler)
    logger.warning("one line that waits")
    assert in_thread(handler.flush)
    assert in_thread(handler.flush)  # again: the stream took nothing since
    logger.removeHandler(handler)
    assert in_thread(handler.close), "a stopping process does not wait on its log for ever"
    os.close(read_end)  # the thread, stuck on the write, sees a broken pipe and ends
    stream.close()


def test_stopping_on_a_stream_that_takes_lines_too_slowly_to_catch_up_waits_a_bounded_time_in_all() -> None:
    """A reader taking 4 KB every 20 ms behind 2 MB of lines (10 s of them): before, stopping
    waited for all of it, as long as that took (measured with a server: still stopping 120 s
    after SIGTERM); now the waits end at their bound, the rest left to the writing thread, a
    daemon that does not hold the process at exit and writes on while it lives."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    received = bytearray()
    hurry = threading.Event()

    def read() -> None:  # slowly, until told to take everything
        while (chunk := os.read(read_end, 65536 if hurry.is_set() else 4096)):
            received.extend(chunk)
            hurry.wait(0.02)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writer = LineWriter(stream)
    writer.start()
    writer.hand("".join(f"line {n:07d} {'x' * 80}\n" for n in range(22_000)), str)

    assert not writer.drained(within_s=0.5), "a flush gives up on a stream that stays behind"
    assert in_thread(lambda: writer.stop(within_s=0.5))
    assert 0 < writer.written < writer.handed  # slow, not stuck: it took lines, not all
    hurry.set()
    wait_for(lambda: writer.taken == writer.handed)  # the thread wrote the rest, then ended
    stream.close()  # no write comes after the last one taken: its descriptor may go
    reader.join(60)
    os.close(read_end)
    assert bytes(received).splitlines() == [f"line {n:07d} {'x' * 80}".encode() for n in range(22_000)]


def test_a_handler_closed_while_still_in_use_writes_on(logger: logging.Logger,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """logging.config.dictConfig closes every handler there is (uvicorn applies one where it is
    given a log_config): one left in place writes on, as logging's StreamHandler does."""
    handler = ServiceLogHandler(sys.stderr)
    handler.setFormatter(formatter("text"))
    logger.addHandler(handler)
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    logger.warning("after dictConfig")
    handler.flush()
    assert " WARNING test.log_stream: after dictConfig" in capfd.readouterr().err


def test_the_server_counts_the_service_log_lines_it_dropped_in_its_metrics() -> None:
    root = logging.getLogger()
    handler = ServiceLogHandler(backlog_chars=-1)  # nothing may wait: every line dropped
    handlers, level = root.handlers[:], root.level
    root.handlers[:], root.level = [handler], logging.INFO
    try:
        for n in range(3):
            logging.getLogger("test.log_stream_metrics").info("line %d", n)
    finally:
        root.handlers[:], root.level = handlers, level
        handler.close()
    scraped = generate_latest(Metrics().registry).decode()
    assert sample_total(scraped, "ortserve_log_dropped_lines_total") == 0  # only the root logger's handlers count
    root.handlers.append(handler)
    try:
        scraped = generate_latest(Metrics().registry).decode()
    finally:
        root.handlers.remove(handler)
    assert sample_total(scraped, "ortserve_log_dropped_lines_total") == 3


@contextlib.contextmanager
def server_writing_to(write_end: int, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m app FLAGS` with its stdout and stderr on `write_end` (this process's copy
    closed), once ready: (the process, its URL). Killed with its workers if still running at
    the end."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--model-dir", str(MODELS),
         "--no-grpc", "--log-level", "info", *flags],
        cwd=ROOT, stdout=write_end, stderr=write_end, start_new_session=True)
    os.close(write_end)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 120)
        yield server, url
    finally:
        if server.poll() is None:  # held: its workers with it
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_server_whose_stderr_nobody_reads_serves_and_stops_on_sigterm() -> None:
    """Its stderr a pipe already full, as a log collector that stopped reading leaves it:
    before, the first line logged on the event loop held the server, which answered nothing
    more (not even /v2/health/live) and did not end on SIGTERM. Two workers: the
    supervising parent logs too."""
    read_end, write_end = full_pipe()
    with server_writing_to(write_end, "--workers", "2", "--model-control-mode", "explicit", "--load-model", "*",
                           "--admin-token", "secret") as (server, url):
        admin = {"authorization": "Bearer secret"}
        body = samples.v2_json(1, MODELS)
        for _ in range(3):  # each unload and load logs lines on a worker's event loop
            assert httpx.post(f"{url}/v2/repository/models/fashion-cnn/unload", headers=admin,
                              timeout=30).status_code == 200
            assert httpx.post(f"{url}/v2/repository/models/fashion-cnn/load", headers=admin,
                              timeout=60).status_code == 200
            answer = httpx.post(f"{url}/v2/models/fashion-cnn/infer", content=body,
                                headers={"content-type": "application/json"}, timeout=30)
            assert answer.status_code == 200, answer.text
        assert httpx.get(f"{url}/v2/health/live", timeout=30).status_code == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    os.close(read_end)


def test_a_server_whose_stderr_is_read_too_slowly_to_catch_up_still_stops_on_sigterm() -> None:
    """Its stderr read 4 KB a second behind an access log's backlog (3,000 requests, about
    400 KB of lines: minutes of reading): before, a stopping worker waited for all of it;
    now for its bound (STOP_WITHIN_S a log), then it exits 0. The 60 s below bounds a hang,
    it does not time the stop."""
    read_end, write_end = os.pipe()
    slowly, stopped = threading.Event(), threading.Event()

    def read() -> None:  # at once until the server is ready, then 4 KB a second
        while not (slowly.is_set() and stopped.wait(1)) and os.read(read_end, 4096):
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with server_writing_to(write_end, "--workers", "1", "--access-log") as (server, url):
            slowly.set()
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(3000):
                    assert client.get("/v2/health/live").status_code == 200
            server.send_signal(signal.SIGTERM)
            assert server.wait(60) == 0
    finally:
        stopped.set()
        reader.join(10)
    os.close(read_end)


def test_the_report_of_a_record_that_could_not_be_written_waits_within_the_backlog_too() -> None:
    buffer = io.StringIO()
    handler = ServiceLogHandler(buffer, backlog_chars=-1)  # nothing may wait
    record = logging.LogRecord("a.library", logging.INFO, __file__, 0, "%d rows", ("many",), None)
    try:
        record.getMessage()
    except TypeError:
        handler.handleError(record)
    handler.close()
    assert handler.dropped == 1
    assert buffer.getvalue() == ""


@pytest.mark.parametrize("sockets", [[], ["--no-reuse-port"]], ids=["a socket per worker", "one shared socket"])
def test_every_worker_writes_its_last_lines_and_exits_0_on_sigterm(sockets: list[str]) -> None:
    """A worker died by the SIGTERM uvicorn raises again after draining, without its exit
    hooks, and the lines still with its log's thread were lost ("Application shutdown
    complete" among them); and uvicorn's own access log stays off."""
    server = ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--no-grpc", *sockets, "--log-level", "info"])
    with server:
        for _ in range(3):
            assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200
    assert server.process is not None
    assert server.process.returncode == 0
    log = server.log.read_text()
    assert log.count("INFO app.main: stopped") == 2
    assert log.count("Application shutdown complete") == 2
    assert log.count("Finished server process") == 2
    assert "uvicorn.access" not in log
