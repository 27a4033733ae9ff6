"""Keeping a CPU awake between one request and the next, at low load.

On a virtual machine an idle vCPU halts, and waking it (for the next request's packet, or
for the client's thread that reads the answer) costs tens to hundreds of microseconds each
time: on this project's 2-core KVM machine one client's requests took 1.2-1.5 times as
long (p50) as a plain per-request FastAPI endpoint's in most runs (docs/benchmarks.md, "One
request at a time"). That endpoint is helped by ONNX Runtime's default thread pool, which spins some
60 ms after every run; this server turns ORT's spinning off (app/runtime.py), because at
load it takes the CPU the event loop needs.

Instead a helper process spins for `window_s` whenever the server is down to one request in
flight: as a lone request arrives and as the last one is answered (`began`, `ended`); a
second request in flight stops it, as the server's own threads keep the CPUs busy from
there, and keeps it stopped for BUSY_HOLD_S after the last time two were in flight: many
clients' gRPC calls reach the loop one at a time, each often answered before the next is
read, and counted one by one they looked like a lone client's all the while (the helper spun
at c16 and c64 and cost unary calls 7-17% of their rate: docs/benchmarks.md, "Threads
apart"). gRPC calls count as in flight but never start it: a lone gRPC client's calls
measured fewer per second with it, with a longer p90. It runs under SCHED_IDLE (nice 19
where that is refused), so any other thread takes its CPU at once: it only uses time nobody
else wants, and what it buys is that a woken thread finds an awake CPU. The event loop's
side is a counter and, at those moments, one write to shared memory (plus one to a pipe when
the helper sleeps).

A separate interpreter, not a thread: a spinning thread would contend with the event loop
for the GIL. It reads only the standard library, and exits when the pipe closes (the
server stopped, or died). One that is killed is replaced: the server looks every CHECK_S.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from typing import BinaryIO

from app.processes import cgroup_cpu_quota

logger = logging.getLogger(__name__)

AUTO_WINDOW_S = 0.002
"""auto's window: room for a client that takes a moment between an answer and its next
request, yet little CPU for a request now and then. With wrk, which asks again at once,
0.5, 2 and 5 ms measured alike at c1 (0.74-0.89 ms per request)."""

BUSY_HOLD_S = 0.05
"""After two requests were in flight, how long the server counts as busy, not down to a
lone client: longer than any gap between the calls of clients kept waiting, far shorter than a
lone client's pause that would matter."""

_DEADLINE = struct.Struct("d")
"""Offset 0: until when (time.monotonic(), shared by every process) the helper spins."""
_ASLEEP = 8
"""Offset 8: 1 while the helper sleeps on the pipe (then the server writes to the pipe to wake it)."""
_SIZE = 16
SLEEP_CHECK_S = 1.0
"""The sleeping helper looks at the deadline at least this often: a wake-up that raced its
falling asleep is then late, never lost."""
CHECK_S = 5.0
"""How often the server looks whether its helper still runs (`replace_if_gone`)."""
REPLACE_AFTER_S = 60.0
"""A helper that exited is replaced at most this often: one that cannot run (no memory, its
interpreter gone) is not started again and again."""


def window_from_setting(setting: float | str) -> float:
    """The `keep_awake_ms` setting in seconds (0: off). auto is off under a CPU quota: the
    helper's spinning would count against the time the workers may use."""
    if setting == "auto":
        return 0.0 if cgroup_cpu_quota() is not None else AUTO_WINDOW_S
    return float(setting) / 1000


def _shared_file() -> BinaryIO:
    """Memory the helper maps too: a memfd where Linux has one (no file system needed: a
    read-only root is fine), else a temporary file."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.fdopen(os.memfd_create("ortserve-keep-awake"), "r+b")
    return tempfile.TemporaryFile()


class KeepAwake:
    """The server's side: start the helper, tell it of each request, stop it. Called on
    the event loop only (HTTP's middleware and gRPC's inference calls)."""

    def __init__(self, window_s: float, sleep_check_s: float = SLEEP_CHECK_S,
                 busy_hold_s: float = BUSY_HOLD_S, replace_after_s: float = REPLACE_AFTER_S) -> None:
        self.window_s = window_s
        self.sleep_check_s = sleep_check_s
        self.busy_hold_s = busy_hold_s
        self.replace_after_s = replace_after_s
        self._replaced_at = -math.inf  # time.monotonic() of the last replacement
        self._busy_until = 0.0  # time.monotonic() until which the server counts as busy
        self._file = _shared_file()
        self._file.truncate(_SIZE)
        self._shared = mmap.mmap(self._file.fileno(), _SIZE)
        self._wake = -1  # the write end of the running helper's pipe (start)
        self._process: subprocess.Popen[bytes] | None = None
        self._in_flight = 0  # requests between began and ended, HTTP's and gRPC's

    @classmethod
    def started(cls, window_s: float) -> KeepAwake:
        """A KeepAwake with its helper running; OSError (and nothing left open) where it
        cannot be made (no file descriptors, no process to spare)."""
        awake = cls(window_s)
        try:
            awake.start()
        except OSError:
            awake.stop()
            raise
        return awake

    def start(self) -> None:
        """The helper started, with a pipe of its own to be woken through (a helper before it,
        replace_if_gone's, took its pipe with it)."""
        with contextlib.suppress(OSError):
            os.close(self._wake)
        self._wake = -1  # closed: no later close may reach a descriptor that number is given again
        wake_read, self._wake = os.pipe()
        os.set_blocking(self._wake, False)  # the event loop never waits on the helper
        fds = (self._file.fileno(), wake_read)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "app.keep_awake", str(fds[0]), str(fds[1]), repr(self.sleep_check_s)],
                pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(wake_read)  # the helper holds it now (or there is none): ours would keep its pipe open
        logger.info("keep-awake helper (pid %d) spins %.1f ms when one request is in flight", self._process.pid,
                    self.window_s * 1000)

    def replace_if_gone(self) -> bool:
        """Where the helper has exited (killed: by an operator's `pkill`, the OOM killer), reap
        it and start another, at most once per replace_after_s; True when one was started.
        Nothing else would notice: without the helper, lone requests are only slower."""
        gone = self._process
        if gone is None or gone.poll() is None:
            return False
        now = time.monotonic()
        if now < self._replaced_at + self.replace_after_s:
            return False
        self._replaced_at = now
        logger.warning("keep-awake helper (pid %d) exited with status %s: starting another", gone.pid,
                       gone.returncode)
        self._shared[_ASLEEP] = 0  # whatever the dead one left: the new one says for itself
        try:
            self.start()
        except OSError as e:
            logger.warning("keep-awake helper not started again (next try in %.0f s): %s", self.replace_after_s, e)
            return False
        return True

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def spins_until(self) -> float:
        """The helper's deadline (time.monotonic()); 0: told to stop spinning."""
        return _DEADLINE.unpack_from(self._shared, 0)[0]

    @property
    def helper_asleep(self) -> bool:
        return bool(self._shared[_ASLEEP])

    def began(self, spins: bool = True) -> None:
        """A request arrived: a lone one keeps a CPU awake for the wake-ups it causes; a
        second in flight stops the spinning (the server is busy: the helper would only
        take turns from its threads), and the server counts as busy for busy_hold_s.
        `spins` False: counted, but never the one that starts the helper (gRPC's calls:
        their own threads wake for each call, and a lone gRPC client measured slower with
        the helper spinning beside them, docs/benchmarks.md, "Threads apart")."""
        self._in_flight += 1
        if self._in_flight == 1:
            if spins and time.monotonic() >= self._busy_until:
                self._spin()
        elif self._in_flight == 2:
            self._busy_until = time.monotonic() + self.busy_hold_s
            _DEADLINE.pack_into(self._shared, 0, 0.0)

    def ended(self, spins: bool = True) -> None:
        """A request was answered: the last in flight keeps a CPU awake for the next to
        arrive, unless two were in flight within busy_hold_s (`spins`: as for `began`)."""
        self._in_flight -= 1
        if self._in_flight == 1:
            self._busy_until = time.monotonic() + self.busy_hold_s
        elif self._in_flight == 0 and spins and time.monotonic() >= self._busy_until:
            self._spin()

    def _spin(self) -> None:
        """The helper spins until window_s from now (woken first where it sleeps)."""
        shared = self._shared
        _DEADLINE.pack_into(shared, 0, time.monotonic() + self.window_s)
        if shared[_ASLEEP]:
            shared[_ASLEEP] = 0
            # a full pipe: woken already; a closed one: the helper is gone (nothing to keep)
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._wake, b"\0")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._wake)  # the helper reads the end of the pipe and exits
        if self._process is not None:
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._shared.close()
        self._file.close()


def _spin(shared: mmap.mmap, wake: int, sleep_check_s: float) -> None:
    deadline = _DEADLINE.unpack_from
    while True:
        while time.monotonic() < deadline(shared, 0)[0]:
            pass  # the work: being a running thread on some CPU
        shared[_ASLEEP] = 1
        if time.monotonic() < deadline(shared, 0)[0]:  # told to spin while falling asleep
            shared[_ASLEEP] = 0
            continue
        ready, _, _ = select.select([wake], [], [], sleep_check_s)
        if ready and not os.read(wake, 4096):
            return  # the server closed the pipe: it is gone or stopping
        shared[_ASLEEP] = 0


def main(argv: list[str]) -> int:
    shared_fd, wake, sleep_check_s = int(argv[0]), int(argv[1]), float(argv[2])
    # SCHED_IDLE: runs only on a CPU nothing else wants, and gives it up at once
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(19)  # where SCHED_IDLE is refused or missing
    shared = mmap.mmap(shared_fd, _SIZE)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole group: the server stops it
        _spin(shared, wake, sleep_check_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
