"""One model repository for every worker process: the repository API's changes (load,
reload, unload) reach every worker, a call answers once every worker serves the new state
(or says which did not and why), and readiness holds only while every worker is ready.

`RepositoryChanges` is the one-process case: the change is the repository's own.
`SharedRepository` keeps a folder (`control_dir`) that the workers of one server share:

- `changes.json`, the ledger: for each model the repository API has touched, whether it
  should be loaded (with the load's configuration, as the client sent it) or unloaded, and
  the generation of that change. Written under an exclusive lock (`changes.lock`), replaced
  in one rename, so a reader sees one whole ledger or the one before.
- `workers/<pid>.json`, each worker's report: the generation it has applied, the outcome of
  its last change of each model, what it serves, and whether its models are ready.
- `uploads/`, the files of loads that carried them (app/repository/uploads.py), each load's
  in a folder that its ledger entry names, removed once a later change of the model settles.

A call records the change in the ledger, applies it, then waits for every live worker's
report to reach that generation; each worker checks the ledger every `FOLLOW_S` and applies
what it has not, in order. A worker that starts (one that uvicorn's supervisor restarted
after a crash, say) applies the whole ledger before it answers, so it serves what the API
last asked for, not only the models it loads at start.

Why a shared file and not a control channel or the parent as coordinator: the parent is
uvicorn's supervisor, which restarts a worker that dies but knows nothing of models, and a
channel would need a process that holds state for workers that come later. The ledger is
that state, on disk, readable by a worker whenever it starts, and the reports make every
worker's view checkable (by the tests too) without a process to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import ModelNotFound, ModelNotReady, ServingError
from app.processes import LEDGER, LOCK, REPORTS, UPLOADS, alive, write_atomically
from app.repository.errors import LoadFailed
from app.repository.names import check_name
from app.repository.repository import ModelRepository, load_override
from app.repository.uploads import Uploads

logger = logging.getLogger(__name__)

FOLLOW_S = 0.1
"""How often a worker looks for changes made through another worker."""
SETTLE_S = 120.0
"""How long a change call waits for the other workers to apply it (a load warms up each
model once per batch size: seconds, not minutes)."""


class RepositoryChanges:
    """The repository API's changes in a server of one process: the repository's own."""

    def __init__(self, repository: ModelRepository, uploads: Uploads | None = None) -> None:
        self.repository = repository
        self.uploads = uploads or Uploads()

    async def start(self) -> None:
        """Before the server answers: nothing to catch up with alone."""

    async def follow(self) -> None:
        """One step of following the other workers (app/main.py runs it every FOLLOW_S)."""

    def stop(self) -> None:
        """At shutdown."""
        self.uploads.close()

    async def load(self, name: str, config: object = None, files: Mapping[str, bytes] | None = None) -> None:
        """Load or reload `name`; `config`: Triton's `parameters.config` (a JSON string) or None;
        `files`: the model's files to serve instead of its folder's (Triton's file overrides)."""
        override = load_override(config, name)
        folder = await self._stage(name, files)
        before = self.repository.upload_of(name)
        try:
            await self.repository.load(name, override, folder)
        except BaseException:
            self.uploads.discard(folder)
            raise
        if before != folder:
            self.uploads.discard(before)

    async def unload(self, name: str, dependents: bool = False) -> None:
        """Unload `name`; `dependents`: an ensemble's step models with it (Triton's unload_dependents)."""
        before = self.repository.upload_of(name)
        await self.repository.unload(name, dependents)
        self.uploads.discard(before)

    async def _stage(self, name: str, files: Mapping[str, bytes] | None) -> Path | None:
        """The load's files written as a model folder (None: none sent); a disk that cannot
        take them is a 503 that says so."""
        if not files:
            return None
        check_name(name)  # before it names a folder
        try:
            return await asyncio.to_thread(self.uploads.stage, name, files)
        except OSError as e:
            logger.error("model %s: its files could not be written: %s", name, e)
            raise ModelNotReady(f"model {name!r}: the files sent could not be written: {e.strerror or e}") from e

    def ready(self) -> bool:
        """Every model that should be served is serving (in every worker)."""
        return self.repository.ready


@dataclass
class _Report:
    """What one worker said last (its `workers/<pid>.json`)."""

    pid: int
    generation: int = 0
    ready: bool = False
    results: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    """model -> (generation of its last change applied, why it failed or None)."""
    serving: dict[str, list[str]] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps({"pid": self.pid, "generation": self.generation, "ready": self.ready,
                           "results": {n: list(r) for n, r in self.results.items()}, "serving": self.serving},
                          sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> _Report:
        data = json.loads(text)
        return cls(pid=int(data["pid"]), generation=int(data["generation"]), ready=bool(data["ready"]),
                   results={n: (int(g), e) for n, (g, e) in data["results"].items()}, serving=data["serving"])


class SharedRepository(RepositoryChanges):
    """The repository API's changes across the `workers` processes that share `folder`."""

    def __init__(self, repository: ModelRepository, folder: Path, workers: int, pid: int | None = None,
                 accepting: Callable[[], bool] = lambda: True) -> None:
        """`accepting`: whether this worker takes connections yet (app/listeners.py), which
        its report's readiness waits for as well as its models."""
        super().__init__(repository, Uploads(folder / UPLOADS))
        self._accepting = accepting
        self.folder = folder
        self.workers = workers
        self.pid = pid or os.getpid()
        self.reports = folder / REPORTS
        self._own = _Report(self.pid)
        self._written = ""
        self._ledger_seen: tuple[int, int, int] | None = None
        self._failures: dict[str, tuple[int, ServingError | None]] = {}  # the last change of each model here
        self._applying = asyncio.Lock()

    # --- following the ledger -------------------------------------------------------------

    async def start(self) -> None:
        self.reports.mkdir(parents=True, exist_ok=True)
        await self._catch_up()

    async def follow(self) -> None:
        seen = self._ledger_signature()
        if seen != self._ledger_seen:
            await self._catch_up()
        self._write_report()  # readiness changes without a change (a breaker, a stall)
        self._peer_reports()  # removes the reports of workers gone, whether or not anyone asks

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            (self.reports / f"{self.pid}.json").unlink()

    async def _catch_up(self) -> None:
        """Apply every change of the ledger this worker has not, oldest first."""
        async with self._applying:
            self._ledger_seen = self._ledger_signature()
            ledger = self._read_ledger()
            changes = sorted(ledger["models"].items(), key=lambda item: item[1]["generation"])
            for name, change in changes:
                generation = change["generation"]
                if generation <= self._own.results.get(name, (0, None))[0]:
                    continue
                failure = await self._apply(name, change)
                self._failures[name] = (generation, failure)
                # An unload of a model this worker never had leaves it as asked: not a failure.
                quiet = isinstance(failure, ModelNotFound) and not change["loaded"]
                self._own.results[name] = (generation, None if failure is None or quiet else failure.message)
            self._own.generation = max(self._own.generation, ledger["generation"])
            self._write_report()

    async def _apply(self, name: str, change: dict[str, Any]) -> ServingError | None:
        """One change here; why it failed, or None."""
        try:
            if change["loaded"]:
                upload = change.get("upload")
                await self.repository.load(name, load_override(change["config"], name),
                                           Path(upload) if upload else None)
            else:
                await self.repository.unload(name, change.get("dependents", False))
        except ServingError as e:
            return e
        except Exception as e:  # a bug must not stop the worker following the others
            logger.exception("applying the repository change of %s failed", name)
            return ServingError(f"{type(e).__name__}: {e}")
        return None

    # --- a change through this worker ------------------------------------------------------

    async def load(self, name: str, config: object = None, files: Mapping[str, bytes] | None = None) -> None:
        load_override(config, name)  # a bad configuration is the caller's 400, recorded nowhere
        folder = await self._stage(name, files)
        await self._change(name, {"loaded": True, "config": config, "upload": str(folder) if folder else None})

    async def unload(self, name: str, dependents: bool = False) -> None:
        await self._change(name, {"loaded": False, "config": None, "dependents": dependents})

    async def _change(self, name: str, change: dict[str, Any]) -> None:
        generation, before = self._record(name, change)
        try:
            await self._catch_up()
            elsewhere = await self._settle(generation)
        finally:  # the model's files of the change before, if it had any: every worker has moved on
            if before.get("upload") and before["upload"] != change.get("upload"):
                self.uploads.discard(Path(before["upload"]))
        applied, failure = self._failures.get(name, (0, None))
        if applied == generation and failure is not None:
            raise failure  # as one process answers: this worker's error, with its status
        failures = {pid: why for pid, why in elsewhere.items() if why is not None}
        if failures:
            raise LoadFailed(f"model {name!r}: the change was made in this worker (pid {self.pid}) but "
                             f"failed in {len(failures)} of the others: " +
                             "; ".join(f"worker {pid}: {why}" for pid, why in sorted(failures.items())))

    async def _settle(self, generation: int) -> dict[int, str | None]:
        """Wait until every other live worker has applied `generation`: each one's outcome
        of the change's model (None: it succeeded)."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            peers = self._peer_reports()
            behind = [p for p in peers.values() if p.generation < generation]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise ModelNotReady(
                    f"the change is made in this worker (pid {self.pid}) but worker(s) "
                    f"{', '.join(str(p.pid) for p in behind)} had not applied it after {SETTLE_S:g} s; "
                    "they apply it when they can, and /v2/health/ready answers 503 until every worker is ready")
            await asyncio.sleep(FOLLOW_S / 2)
        return {p.pid: _outcome(p, generation) for p in peers.values()}

    def _record(self, name: str, change: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Add the change to the ledger, under its lock: its generation, and the model's change
        it replaces (empty: none)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ledger = self._read_ledger()
            generation = ledger["generation"] + 1
            ledger["generation"] = generation
            before = ledger["models"].get(name, {})
            ledger["models"][name] = {**change, "generation": generation}
            write_atomically(self.folder / LEDGER, json.dumps(ledger, sort_keys=True))
        return generation, before

    # --- what the workers say ----------------------------------------------------------------

    def ready(self) -> bool:
        """This worker's models are ready, and so are every other worker's: all `workers` of
        them reporting (one still starting, or restarting after a crash, is not ready yet).
        The reports are read as asked, not as last followed: every worker then answers from
        the same files, so a probe spread over the workers cannot get 200 from one that has
        read a new worker's report and 503 from one that has not yet (a readiness probe is
        rare; reading a few small files is nothing beside it). This worker's own report is
        brought up to date first, and it judges itself by it as the others do: one that
        answered 200 while its report, written every FOLLOW_S, still said its socket was not
        listening had the next probe, on another worker, answer 503."""
        self._write_report()
        if not self._own.ready:
            return False
        peers = self._peer_reports()
        return len(peers) >= self.workers - 1 and all(p.ready for p in peers.values())

    def _write_report(self) -> None:
        own = self._own
        own.ready = self.repository.ready and self._accepting()
        own.serving = {name: self.repository.versions_of(name) for name in self.repository.names()}
        text = own.as_json()
        if text == self._written:
            return
        try:
            self.reports.mkdir(parents=True, exist_ok=True)
            write_atomically(self.reports / f"{self.pid}.json", text)
            self._written = text
        except OSError as e:
            logger.warning("cannot write this worker's report to %s: %s", self.reports, e)

    def _peer_reports(self) -> dict[int, _Report]:
        """The other live workers' reports; those of workers gone are removed."""
        peers: dict[int, _Report] = {}
        try:
            files = list(self.reports.glob("*.json"))
        except OSError:
            files = []
        for path in files:
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == self.pid:
                continue
            if not alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                peers[pid] = _Report.parse(path.read_text())
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced: left out of this reading
        return peers

    def _read_ledger(self) -> dict[str, Any]:
        try:
            ledger: dict[str, Any] = json.loads((self.folder / LEDGER).read_text())
            return ledger
        except FileNotFoundError:
            return {"generation": 0, "models": {}}

    def _ledger_signature(self) -> tuple[int, int, int] | None:
        try:
            found = (self.folder / LEDGER).stat()
        except OSError:
            return None
        return found.st_ino, found.st_mtime_ns, found.st_size


def _outcome(report: _Report, generation: int) -> str | None:
    """A worker's outcome of the change `generation` (None: it succeeded, or the model has
    changed again since, which is what it serves now)."""
    for applied, why in report.results.values():
        if applied == generation:
            return why
    return None
