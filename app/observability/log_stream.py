"""Log lines written to their stream by a thread of their own, with what waits for it bounded.

The service's log and its access log go to stderr, which under Docker, Kubernetes or
systemd is a pipe that a log collector reads. When the reader stops taking lines (stuck,
slowed by a full disk, or gone with the pipe left open), a write blocks once the pipe's
64 KiB are full. A log call on the event loop then held the whole server: measured, a
worker whose stderr nobody read answered nothing more once its access log had filled the
pipe and a model load logged a line, not even `/v2/health/live`, and SIGTERM did not end
it (docs/benchmarks.md, "A log stream that takes nothing"). So:

- `LineWriter` is the thread that writes: callers format their lines and hand it the text,
  and go on at once; the text goes out in writes of whole lines that a pipe takes whole.
- What waits for it is bounded: past its callers' backlog (`ServiceLogHandler` here; the
  access log, app/observability/access.py), lines are dropped and counted, and a line says
  how many before the next text the writer is handed (`room`, `hand`).
- Stopping and flushing wait while the stream takes lines, until it has taken nothing for
  STOP_WAIT_S, and not at all once it has made a caller give up and taken nothing since:
  a stuck stream does not keep a stopping process alive (the thread is a daemon, left
  behind at exit). A slow one is waited for STOP_WITHIN_S at most, in all: a reader taking
  4 KB every 0.5 s behind an access log's backlog kept a stopping worker past 120 s
  (measured; the backlogs may reach 9 MB), until the orchestrator's kill, which loses the
  same lines and ends the process with 137, not 0.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from logging.handlers import QueueListener
from typing import Any

STOP_WAIT_S = 2.0
"""How long flushing or stopping waits for a stream that takes nothing before giving up on it."""
STOP_WITHIN_S = 4.0
"""How long flushing and stopping wait, in all, for a stream that takes lines but stays behind
(a slow reader): the rest is lost. Per writer, and a process has two (its log, its access
log): 8 s in all, within the 10 s that the shipped compose file and Kubernetes Deployment
leave after the drain delay and the grace period."""
BACKLOG_CHARS = 1024 * 1024
"""The service log's text handed to its thread and not yet written, at most: thousands of
lines, far more than the service writes in a second outside a fault."""
LOGGER = "ortserve.log"
"""The logger name of the lines the log says about itself: how many lines were dropped, and a
record that could not be written."""


class LineWriter(QueueListener):
    """The writing thread: each handed-over text written and flushed, one write per
    handover. (QueueListener for its thread, its queue and its sentinel.)

    Where the stream is a file descriptor (stderr), the text goes out in writes of whole
    lines of at most PIPE_BUF bytes each, which a pipe takes whole: under Docker or
    Kubernetes stderr is a pipe that every worker process writes to, and one larger write
    is split wherever the reader falls behind, with another worker's lines in between
    (two workers, JSON lines, a reader taking 4 KB every 2 ms: 2,598 of 36,759 lines torn;
    docs/benchmarks.md)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(queue.SimpleQueue())
        self.stream = stream
        # Characters of text handed over, counted by the handing thread (one at a time: the
        # loop, or a handler under its lock), and taken off the queue (written, or lost to a
        # broken stream), counted by this one: each count has one writer, no lock.
        self.handed = 0
        self.taken = 0
        self.unsaid = 0  # lines dropped and not yet said in the log itself
        self.dropped = 0  # lines dropped since this writer was made
        self.written = 0  # how much the stream took, piece by piece: how a wait tells a slow stream from a stuck one
        self._stuck_at: int | None = None  # `written` when a caller last gave up waiting for the stream
        self._waited_s = 0.0  # how long callers have waited for the stream since it last caught up
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
            self.fd = None
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def handle(self, record: Any) -> None:
        if isinstance(record, threading.Event):  # a caller waiting for what was handed before it
            record.set()
            return
        try:
            if self.fd is None:
                self.stream.write(record)
                self.stream.flush()
                self.written += len(record)
                return
            self.stream.flush()  # what others wrote through the stream goes first
            for chunk in whole_lines(record.encode(self.encoding, "backslashreplace"), select.PIPE_BUF):
                _write_all(self.fd, chunk)
                self.written += len(chunk)
        except (OSError, ValueError):  # the stream closed or broken: lines are lost, requests are not
            pass
        finally:
            self.taken += len(record)

    def room(self, backlog_chars: int, lines: int = 1) -> bool:
        """Whether at most `backlog_chars` wait for the stream, so that more may be handed;
        where not, `lines` are counted as dropped (to be said with the next text handed) and
        the caller drops them, unformatted."""
        if self.handed - self.taken <= backlog_chars:
            return True
        self.unsaid += lines
        self.dropped += lines
        return False

    def hand(self, text: str, dropped_line: Callable[[int], str]) -> None:
        """`text` to be written, after `dropped_line(count)` where lines were dropped since the
        last text: where they are missing from."""
        if self.unsaid:
            text = dropped_line(self.unsaid) + text
            self.unsaid = 0
        self.handed += len(text)
        self.queue.put_nowait(text)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def drained(self, wait_s: float = STOP_WAIT_S, within_s: float = STOP_WITHIN_S) -> bool:
        """Whether everything handed over before this call is written: waiting while the
        stream takes it, and giving up once the stream has taken nothing for `wait_s`, or
        once it has been waited for `within_s` in all, this wait and those before it that
        it did not catch up on (slow: a process stopping flushes twice, then stops). Not
        waiting at all where it took nothing since it last made a caller give up (stuck:
        a process stopping would wait on it at every flush)."""
        if not self.running:
            return True
        if self._stuck_at is not None and self._stuck_at == self.written:
            return False
        if self.handed == self.taken:
            self._waited_s = 0.0  # caught up: the waits before count no more
        elif self._waited_s >= within_s:
            return False  # waited for in all already, and still behind
        started = time.monotonic()
        until = started + within_s - self._waited_s
        done = threading.Event()
        self.queue.put_nowait(done)
        seen = self.written
        try:
            while not done.wait(max(0.0, min(wait_s, until - time.monotonic()))):
                if time.monotonic() >= until:
                    return False  # slow: what is still waiting is left behind
                if self.written == seen:
                    self._stuck_at = seen
                    return False
                seen = self.written
        finally:
            self._waited_s += time.monotonic() - started
        self._stuck_at, self._waited_s = None, 0.0
        return True

    def stop(self, wait_s: float = STOP_WAIT_S, within_s: float = STOP_WITHIN_S) -> None:
        """Everything handed over written (`drained`), then the thread ended: a stream that
        takes nothing for `wait_s`, or is still behind after `within_s`, is waited for no
        longer (QueueListener's own stop waits for ever). Once: a second call does nothing."""
        if self._thread is None:
            return
        drained = self.drained(wait_s, within_s)
        self.enqueue_sentinel()
        self._thread.join(wait_s if drained else 0)
        self._thread = None  # one stuck on its stream is a daemon: it does not hold the process at exit


class ServiceLogHandler(logging.Handler):
    """logging's StreamHandler, for the service's own log lines, with the writing done by a
    LineWriter: a record is filtered and formatted on the thread that logs it, as before,
    and handed over as text. Past `backlog_chars` waiting for the stream, records are
    dropped and counted (`dropped`, for the metrics), and one line says how many before the
    next line the stream takes."""

    def __init__(self, stream: Any = None, backlog_chars: int = BACKLOG_CHARS) -> None:
        super().__init__()
        self.backlog_chars = backlog_chars
        self._writer = LineWriter(stream or sys.stderr)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        # logging.Handler.handle holds this handler's lock around emit: one thread at a time here
        try:
            if not self._writer.running:  # closed (logging.config.dictConfig closes every handler) and still in use
                self._writer.start()
            if self._writer.room(self.backlog_chars):  # else dropped, not even formatted
                self._writer.hand(self.format(record) + "\n", self._dropped_line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    @property
    def dropped(self) -> int:
        """Lines dropped since this handler started (its writer counts them)."""
        return self._writer.dropped

    def handleError(self, record: logging.LogRecord) -> None:
        """A record that could not be written (a log call whose arguments do not fit its
        message, in any library) reported as a line of the log, in its form and through its
        thread: logging's own report is text written to sys.stderr on the calling thread,
        where a stuck stream would hold it."""
        if not logging.raiseExceptions or not self._writer.room(self.backlog_chars):  # logging's switch for these reports
            return
        report = logging.LogRecord(
            LOGGER, logging.ERROR, __file__, 0, "a log line of %s could not be written: message %r, "
            "arguments %r", (record.name, record.msg, record.args), sys.exc_info())
        try:
            self._writer.hand(self.format(report) + "\n", self._dropped_line)
        except Exception:  # not even that: logging's own report
            super().handleError(record)

    def _dropped_line(self, lines: int) -> str:
        """How many lines were dropped, as a line of this log (the JSON form has `"dropped": N`
        too)."""
        message = (f"{lines} log lines dropped: more than {self.backlog_chars:,} characters were waiting "
                   "for the log's stream to take them")
        record = logging.LogRecord(LOGGER, logging.WARNING, __file__, 0, message, None, None)
        record.fields = {"dropped": lines}
        return self.format(record) + "\n"

    def flush(self) -> None:
        self._writer.drained()

    def close(self) -> None:
        self._writer.stop()
        super().close()


def dropped_lines() -> int:
    """The service log's lines this process dropped (its root logger's ServiceLogHandler)."""
    return sum(h.dropped for h in logging.getLogger().handlers if isinstance(h, ServiceLogHandler))


def whole_lines(data: bytes, limit: int) -> list[bytes]:
    """`data` cut at line ends into pieces of at most `limit` bytes (a line longer than that
    is a piece of its own)."""
    pieces, start, size = [], 0, len(data)
    while size - start > limit:
        cut = data.rfind(b"\n", start, start + limit)
        if cut < 0:  # one line past the limit: whole, alone
            cut = data.find(b"\n", start + limit)
            if cut < 0:
                break
        pieces.append(data[start:cut + 1])
        start = cut + 1
    if start < size:
        pieces.append(data[start:])
    return pieces


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

