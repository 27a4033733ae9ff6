"""Settings that Triton's clients change while the server runs (the log's, the traces'), the
same in every worker: a change made through one worker is written to the control folder
(replaced in one rename, under a lock, on top of the latest), and every other worker applies
it when it sees the file change, looking every FOLLOW_S (app/main.py); a worker that starts
applies it before it answers."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from app.errors import ServingError
from app.processes import file_stamp, write_atomically

logger = logging.getLogger(__name__)


class Changeable(Protocol):
    def changed(self, asked: Mapping[str, Any]) -> Any:
        """These settings with those `asked` names changed (Triton's names); InvalidInput
        naming the first that cannot be."""
        ...

    def as_triton(self) -> dict[str, Any]:
        """Every setting, by Triton's names, as its GET answers them (and the file holds them)."""
        ...


S = TypeVar("S", bound=Changeable)


class SharedSettings(Generic[S]):
    """This process's settings of one kind, and with a control folder every worker's."""

    def __init__(self, what: str, initial: S, apply: Callable[[S], None], file: Path | None = None,
                 lock: Path | None = None) -> None:
        self.what = what  # "log settings": for the log's lines
        self.current = initial
        self._apply_to_process = apply
        self._file, self._lock = file, lock
        self._seen: tuple[int, int, int] | None = None
        apply(initial)
        self.follow()  # a worker that starts after a change applies it before it answers

    def change(self, asked: Mapping[str, object]) -> S:
        """The settings `asked` changes, applied here and, with a control folder, written for
        every other worker; InvalidInput where one cannot be (and nothing changed then)."""
        if self._file is None or self._lock is None:
            settings = self.current.changed(asked)
        else:  # under the lock, on top of the latest: two workers' changes at once both hold
            with self._lock.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write
                self.follow()
                settings = self.current.changed(asked)
                write_atomically(self._file, json.dumps(settings.as_triton()))
                self._seen = file_stamp(self._file)
        self._apply(settings)
        return settings

    def follow(self) -> None:
        """Apply the settings another worker wrote, if they changed since last looked at."""
        if self._file is None:
            return
        stamp = file_stamp(self._file)
        if stamp is None or stamp == self._seen:
            return
        self._seen = stamp
        try:
            written = json.loads(self._file.read_text())
            settings = self.current.changed(written)
        except (OSError, ValueError, ServingError) as e:  # a file not written by a worker (InvalidInput)
            logger.warning("the %s in %s cannot be applied (%s); keeping %s", self.what, self._file, e,
                           self.current.as_triton())
            return
        self._apply(settings)

    def _apply(self, settings: S) -> None:
        changed = settings != self.current
        self.current = settings
        self._apply_to_process(settings)
        if changed:  # at WARNING: it shows unless warnings are what was switched off
            logger.warning("worker %d: %s now %s", os.getpid(), self.what, settings.as_triton())
