"""The worker processes of one server: how many `workers auto` starts, and the control
folder they share (its layout; app/repository/shared.py, app/observability/shared_settings.py
and app/protocol/shared_memory.py read and write it).

Kept free of onnxruntime and the app: `python -m app`'s parent process reads it before it
starts the workers, and stays small for it (it only supervises them).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Literal

LEDGER = "changes.json"
"""The repository API's changes, for every worker to apply."""
LOCK = "changes.lock"
REPORTS = "workers"
"""Each worker's report, `<pid>.json`."""
UPLOADS = "uploads"
"""Where models loaded with their files (Triton's file overrides) are written for every worker."""
LOG_SETTINGS = "logging.json"
"""The log's settings as last changed through the logging extension (app/observability/log_settings.py)."""
LOG_SETTINGS_LOCK = "logging.lock"
TRACE_SETTINGS = "tracing.json"
"""The traces' settings as last changed through the trace extension (app/observability/trace_settings.py)."""
TRACE_SETTINGS_LOCK = "tracing.lock"
SHM_LEDGER = "shared_memory.json"
"""The system shared-memory regions clients registered (app/protocol/shared_memory.py)."""
SHM_LOCK = "shared_memory.lock"
PEERS = "peers"
"""Each worker's socket, `<pid>.sock`, for the others' steps of its sequences (app/sequence_peers.py)."""


def available_cpus() -> int:
    """CPUs this process may really use: the cgroup quota (a container's --cpus) if any,
    else the affinity mask. os.cpu_count() would report the host's cores."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else count


def worker_count(workers: int | Literal["auto"]) -> int:
    """The worker processes to start: auto is one per usable CPU, each with its own event
    loop (the loop, parsing every request, is what one process runs out of first)."""
    return available_cpus() if workers == "auto" else workers


def cgroup_cpu_quota() -> float | None:
    """The CPUs' worth of time the cgroup may use (a container's --cpus); None: no quota."""
    try:  # cgroup v2
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """A running process (not a zombie its parent has yet to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def write_atomically(path: Path, text: str) -> None:
    """A file of the control folder replaced in one rename: a reader sees it whole, new or old."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one write of a file from another (None: no file): a rename makes a new
    inode, an edit in place a new mtime or size."""
    with contextlib.suppress(OSError):
        found = path.stat()
        return found.st_ino, found.st_mtime_ns, found.st_size
    return None


def clear_control_folder(folder: Path) -> None:
    """Before the workers start: the ledger, reports, log settings, shared-memory regions and
    sockets of an earlier run are not this one's."""
    for path in (folder / LEDGER, folder / LOCK, folder / LOG_SETTINGS, folder / LOG_SETTINGS_LOCK, folder / SHM_LEDGER,
                 folder / SHM_LOCK, folder / TRACE_SETTINGS, folder / TRACE_SETTINGS_LOCK):
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        for report in (folder / REPORTS).iterdir():
            report.unlink()
    shutil.rmtree(folder / UPLOADS, ignore_errors=True)
    shutil.rmtree(folder / PEERS, ignore_errors=True)
