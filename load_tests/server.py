"""Start a server on a free loopback port, wait until it is ready, stop it with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx

from load_tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m app ARGS` (or the ceiling app) as a context manager; loopback only."""

    def __init__(self, args: list[str], *, asgi: str | None = None, ready_timeout_s: float = 90,
                 checkout: Path = ROOT, env: dict[str, str] | None = None, command: list[str] | None = None,
                 ready_path: str = "/v2/health/ready", ready: Callable[[ServerProcess], bool] | None = None
                 ) -> None:
        """`asgi`: another app to serve instead of the service (`module:app`, e.g. the ceiling);
        `command`: another server altogether (a peer such as load_tests/triton_peer.py), given
        `--port N`; `ready_path`: what answers 200 once it serves (or `ready`, whether it
        serves, for a server without HTTP); `checkout`: the source tree
        whose `app` runs (another git worktree, to compare versions)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The gRPC service's port, free as the HTTP one: through the environment, which a
        # checkout from before gRPC (load_tests/versions.py) ignores.
        self.grpc_port = free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.env = {**os.environ, "ORTSERVE_GRPC_PORT": str(self.grpc_port), **(env or {})}
        if command:
            self.command = [*command, "--port", str(self.port)]
        elif asgi:
            self.command = [sys.executable, "-m", "uvicorn", asgi, "--host", "127.0.0.1",
                            "--port", str(self.port), "--no-access-log", "--loop", "uvloop", "--http", "httptools",
                            "--log-level", "warning", *args]  # uvicorn's own options (--workers 2)
        else:
            self.command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(self.port),
                            "--log-level", "warning", *args]
        self.ready_timeout_s = ready_timeout_s
        self.ready_path = ready_path
        self.ready = ready or _http_ready
        self.checkout = checkout
        self.log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(self.command, cwd=self.checkout, stdout=sink, stderr=subprocess.STDOUT,
                                            env=self.env)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(self.command)}\n{self.log.read_text()}")
            if self.ready(self):
                return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise TimeoutError(f"server not ready after {self.ready_timeout_s}s:\n{self.log.read_text()}")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children (workers), from /proc."""
        assert self.process is not None
        return sum(_cpu_of(f"/proc/{pid}/stat") for pid in [self.process.pid, *_children(self.process.pid)])

    def cpu_by_thread(self) -> dict[str, float]:
        """User + system CPU seconds so far of the server's processes (workers and their
        helpers too), by thread: "loop" the main thread of the server or of each worker (with
        workers, the supervising parent's is "supervisor"), "helpers" every thread of other
        child processes (keep-awake), and the rest by the name the system has for them,
        their numbers cut off ("infer-fashion-c" for a model's inference threads,
        app/tuning.py; "decode"; "event_engine" for gRPC core's; "python" for threads no
        one named: ONNX Runtime's own pools, grpc.aio's poller). A process's threads that have
        ended are "exited": /proc counts them in the process, no longer by thread."""
        assert self.process is not None
        workers = self.worker_pids()
        top = self.process.pid
        by_thread: dict[str, float] = {}
        for pid in _descendants(top):
            threads = _threads(pid)
            for tid, name, seconds in threads:
                if pid != top and pid not in workers:
                    group = "helpers"
                elif tid == pid:
                    group = "supervisor" if pid == top and workers else "loop"
                else:
                    group = name.rstrip("0123456789").rstrip("_-") or name
                by_thread[group] = by_thread.get(group, 0.0) + seconds
            exited = _cpu_of(f"/proc/{pid}/stat") - sum(seconds for _, _, seconds in threads)
            if exited > 0:
                by_thread["exited"] = by_thread.get("exited", 0.0) + exited
        return by_thread

    def resident_mb(self) -> float:
        """Resident MB of the server: its process and its workers (with workers, the process
        only supervises; the models and the requests' memory are in the workers)."""
        assert self.process is not None
        return sum(resident_kb(pid) for pid in [self.process.pid, *self.worker_pids()]) / 1024

    def serving_pids(self) -> set[int]:
        """The processes that serve: the workers, or the process itself where it has none."""
        assert self.process is not None
        return self.worker_pids() or {self.process.pid}

    def worker_pids(self) -> set[int]:
        """uvicorn's worker processes (multiprocessing's spawned children; not its resource
        tracker); none where one process serves."""
        assert self.process is not None
        found = set()
        for pid in _children(self.process.pid):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(pid)
            except OSError:
                continue
        return found

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def serving_repository(make: Callable[[Path], None], workers: str, prefix: str) -> Iterator[ServerProcess]:
    """A server on a temporary model directory that `make` fills, for a benchmark's runs."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        home = Path(folder) / "models"
        make(home)
        with ServerProcess(["--model-dir", str(home), "--workers", workers]) as server:
            yield server


Way = TypeVar("Way")


def alternating(ways: Sequence[Way], rounds: int) -> Iterator[tuple[int, Way]]:
    """(round, way) for paired rounds: each way once a round, the order reversed every other
    round, so that neither always runs first (a warmer or a cooler machine)."""
    for i in range(rounds):
        for way in ways if i % 2 == 0 else ways[::-1]:
            yield i, way


def _http_ready(server: ServerProcess) -> bool:
    try:
        return httpx.get(f"{server.url}{server.ready_path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found = [pid]
    for child in _children(pid):
        found += _descendants(child)
    return found


def _threads(pid: int) -> list[tuple[int, str, float]]:
    """(thread id, its name in the system, its user + system CPU seconds) of each thread of `pid`."""
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        found.append((int(tid), stat[stat.index("(") + 1 : stat.rindex(")")], _cpu_in(stat)))
    return found


def resident_kb(pid: int) -> int:
    """A process's resident size in KiB (VmRSS; 0 where it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def _cpu_of(stat_path: str) -> float:
    """User + system CPU seconds in a /proc stat file (0 where it is gone)."""
    try:
        return _cpu_in(Path(stat_path).read_text())
    except OSError:
        return 0.0


def _cpu_in(stat: str) -> float:
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
