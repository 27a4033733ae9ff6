"""Files each worker process writes for the others to read, in a folder they share: its
metrics (workers.py), its Triton statistics (worker_stats.py) and its slowest recent traces
(worker_traces.py).

A worker's file is `<pid><suffix>`, written whole (a reader never sees half a file). When
the worker exits, or another finds it dead, the file is renamed `retired-<pid>-<ns><suffix>`
(one atomic rename, by whichever worker sees it first) and stays: what a worker counted
stays counted after it is gone, so totals never go backwards (its traces are not read again).
`Published` is the JSON kind: written only when it changed, a failure logged once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from app.processes import alive

RETIRED = "retired-"

logger = logging.getLogger(__name__)


@dataclass
class Others:
    """What the other workers wrote: the live ones' files by pid, the retired ones' texts."""

    live: dict[int, str] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)


class Snapshots:
    """One worker's file of one kind (`suffix`), and everyone else's of that kind."""

    def __init__(self, folder: Path, suffix: str, pid: int) -> None:
        self.folder = folder
        self.suffix = suffix
        self.pid = pid
        self.path = folder / f"{pid}{suffix}"
        with contextlib.suppress(OSError):  # else the first write reports it
            folder.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> None:
        """This worker's file, replaced whole, the folder made again where it was removed;
        OSError where the folder cannot take it."""
        try:
            self._replace(data)
        except OSError:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._replace(data)

    def _replace(self, data: bytes) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(self.path)

    def retire(self) -> None:
        """At exit: the file stays, as a retired worker's."""
        _retire(self.path, self.suffix)

    def others(self, retired: bool = True) -> Others:
        """Every other worker's file as last written, and (`retired`) the retired workers'
        files (a live worker's file whose process is gone is retired on the way)."""
        found = Others()
        try:
            paths = sorted(self.folder.glob(f"*{self.suffix}"))
        except OSError:
            return found
        for path in paths:
            pid = None  # stays None for a retired worker's file
            if not path.name.startswith(RETIRED):
                pid = self._pid_of(path)
                if pid is None or pid == self.pid:
                    continue
                if not alive(pid):  # died without retiring its file
                    path, pid = _retire(path, self.suffix), None
            if pid is None and not retired:
                continue
            text = _read(path)
            if text is None:
                continue
            if pid is None:
                found.retired.append(text)
            else:
                found.live[pid] = text
        return found

    def _pid_of(self, path: Path) -> int | None:
        """The worker a live file `<pid><suffix>` belongs to; None for any other file."""
        stem = path.name.removesuffix(self.suffix)
        return int(stem) if stem.isdigit() else None


def clear(folder: Path, suffixes: tuple[str, ...]) -> None:
    """Before the workers start: a folder kept from an earlier run holds nothing of this one."""
    for suffix in suffixes:
        for path in folder.glob(f"*{suffix}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _retire(path: Path, suffix: str) -> Path:
    """A worker's file renamed to a retired one, or the name another worker gave it first."""
    pid = path.name.removesuffix(suffix)
    target = path.with_name(f"{RETIRED}{pid}-{time.time_ns()}{suffix}")
    try:
        path.replace(target)
    except OSError:
        renamed = sorted(path.parent.glob(f"{RETIRED}{pid}-*{suffix}"))
        return renamed[-1] if renamed else target  # (gone with the folder: nothing to read)
    return target


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # removed between glob and read
        return None


class Published:
    """A worker's figures of one kind as JSON, for the others: written when they changed since
    last written, a failure logged once per spell of failures (the figures are tried again
    each time)."""

    def __init__(self, folder: Path, suffix: str, pid: int, what: str) -> None:
        self.files = Snapshots(folder, suffix, pid)
        self.what = what  # for the log: "statistics", "traces"
        self._written: bytes | None = None
        self._failing = False

    def publish(self, figures: object) -> None:
        data = orjson.dumps(figures, default=str)  # orjson: a tenth of json's time for statistics
        if data == self._written:
            return
        try:
            self.files.write(data)
        except OSError as e:
            if not self._failing:
                self._failing = True
                logger.warning("cannot write this worker's %s to %s (%s): other workers answer without its "
                               "figures until it can", self.what, self.files.folder, e)
            return
        self._failing = False
        self._written = data

    def retire(self, figures: object) -> None:
        """At exit: the last figures stay, as a retired worker's."""
        self._written = None
        self.publish(figures)
        self.files.retire()

    def others(self, retired: bool = True) -> tuple[list[object], list[object]]:
        """What the live other workers published, and (`retired`) the retired ones: the JSON of
        each file (a file that is not JSON is skipped: no worker wrote it whole)."""
        found = self.files.others(retired)
        return _parsed(found.live.values()), _parsed(found.retired)


def _parsed(texts: Iterable[str]) -> list[object]:
    parsed = []
    for text in texts:
        try:
            parsed.append(orjson.loads(text))
        except orjson.JSONDecodeError:
            continue
    return parsed
