"""The model repository: which model versions exist on disk, which are served, and every
change between the two (load, replace, unload) while requests keep flowing.

A model is a folder `<model_dir>/<name>/` of version folders `<version>/`. Its version
policy (app/manifest.py `VersionPolicy`) says which versions are served. Each change is
made beside what serves: a new version is loaded and warmed up in a worker thread, then
the routing table is swapped in one step, and the versions it replaced finish their
requests before they are unloaded. A version that fails to load is UNAVAILABLE with its
reason; every other model, and the versions already serving, go on serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from app.errors import InvalidInput, ModelNotFound, ModelNotReady, ServingError
from app.loading import LoadError, load_version, manifest_fingerprint
from app.manifest import (
    MAX_NAME_LENGTH,
    MAX_VERSION_DIGITS,
    MODEL_NAME_PATTERN,
    ManifestError,
    VersionPolicy,
    load_manifest,
)
from app.observability.metrics import Metrics
from app.observability.stats import ModelStats
from app.runtime import OrtOptions
from app.served_model import Lease, ServedModel
from app.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class State(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass
class VersionStatus:
    state: State
    reason: str = ""


class LoadFailed(ServingError):
    """A load call that left a model (or some of its versions) unavailable."""

    status_code = 400


class RepositoryUnreadable(ServingError):
    """The model folder (or one model's) could not be read: the operator's to fix, logged."""

    status_code = 503


_NAME = re.compile(MODEL_NAME_PATTERN)


def check_name(name: str) -> None:
    """400 for a string no model can be named, before anything touches the disk: a model's
    name is one plain folder name ('..', separators, NUL and the like never are)."""
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidInput(f"{shown!r} is not a model name: a name is 1 to {MAX_NAME_LENGTH} characters of "
                           "a-z, 0-9, '.', '_' and '-', starting with a letter or digit")


def check_version(version: str) -> None:
    if not (version.isascii() and version.isdigit() and len(version) <= MAX_VERSION_DIGITS):
        shown = version if len(version) <= 32 else version[:32] + "..."
        raise InvalidInput(f"{shown!r} is not a model version: a version is a number of 1 to "
                           f"{MAX_VERSION_DIGITS} digits")


@dataclass
class FolderScan:
    """One model's folder as read from disk (in a worker thread, off the event loop)."""

    signature: tuple[tuple[str, int, int], ...]
    folders: dict[int, Path]
    refused: dict[str, str]
    policy: VersionPolicy
    fingerprints: dict[int, str]


class ModelRepository:
    def __init__(self, settings: Settings, ort: OrtOptions, metrics: Metrics) -> None:
        self.settings = settings
        self.ort = ort
        self.metrics = metrics
        self.root = settings.model_dir
        self.default_policy = VersionPolicy.parse(settings.version_policy)
        # The routing table: replaced, never changed in place, so a request sees either the
        # table before a change or the one after it.
        self._served: dict[str, dict[str, ServedModel]] = {}
        self._newest: dict[str, ServedModel] = {}
        self._status: dict[tuple[str, str], VersionStatus] = {}
        self._policies: dict[str, VersionPolicy] = {}
        self._wanted: set[str] = set()  # models that should be served: readiness waits for them
        self._locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, tuple[tuple[str, int, int], ...]] = {}  # each folder as last read
        self._on_disk: set[str] = set()  # model folders found by the last scan
        self._misnamed: set[str] = set()  # folders whose name no model can have, warned about once

    # --- requests -------------------------------------------------------------------

    def lease(self, name: str, version: str | None = None) -> Lease:
        """`async with repository.lease(name, version) as model`: the model a request should
        use, held until the block ends."""
        return self.get(name, version).lease()

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self._newest.get(name) if version is None else self._served.get(name, {}).get(version)
        if model is None:
            raise self._why_not_served(name, version)
        if not model.ready:
            model.health.check()
        return model

    def _why_not_served(self, name: str, version: str | None) -> ServingError:
        check_name(name)
        if version is not None:
            check_version(version)
        versions = self._served.get(name)
        if versions and version is not None:
            status = self._status.get((name, version))
            if status is not None and status.state is not State.READY:
                return ModelNotReady(f"model {name!r} version {version} is {status.state}: {status.reason}")
            return ModelNotFound(f"model {name!r} has no version {version!r}; versions served: "
                                 f"{sorted(versions, key=int)}")
        known = [(v, s) for (n, v), s in self._status.items() if n == name]
        if not known and name in self._on_disk:
            return ModelNotReady(f"model {name!r} is not loaded (control mode {self.settings.model_control_mode!r}: "
                                 "load it through the repository API)")
        if not known:
            return ModelNotFound(f"unknown model {name!r}; served models: {self.names()}")
        reasons = "; ".join(f"version {v} {s.state}: {s.reason}" for v, s in sorted(known, key=lambda k: int(k[0])))
        return ModelNotReady(f"model {name!r} is not being served ({reasons})")

    def all(self) -> list[ServedModel]:
        return [m for versions in self._served.values() for m in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._served)

    def serves(self, name: str) -> bool:
        """Whether `name` is a model of this repository (for labels that must name real models)."""
        return name in self._served or name in self._on_disk or self._has_status(name)

    def _has_status(self, name: str) -> bool:
        """Whether any version of `name` was ever found or loaded."""
        return any(n == name for n, _ in self._status)

    def versions_of(self, name: str) -> list[str]:
        return sorted(self._served.get(name, {}), key=int)

    def policy_of(self, name: str) -> VersionPolicy:
        return self._policies.get(name, self.default_policy)

    @property
    def ready(self) -> bool:
        """Every model that should be served is serving, and healthy."""
        return all(any(m.ready for m in self._served.get(name, {}).values()) for name in self._wanted)

    # --- what is on disk ------------------------------------------------------------

    def _names_on_disk(self) -> list[str]:
        """The model folders' names (run in a worker thread). Folders whose name no model can
        have are left out, with a warning the first time."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"model directory {self.root} does not exist")
        names = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                check_name(path.name)
            except InvalidInput as e:
                if path.name not in self._misnamed:
                    self._misnamed.add(path.name)
                    logger.warning("model folder %s is not served: %s", path, e.message)
                continue
            names.append(path.name)
        return sorted(names)

    async def model_names_on_disk(self) -> list[str]:
        try:
            names = await asyncio.to_thread(self._names_on_disk)
        except OSError as e:
            logger.error("the model folder %s cannot be read: %s", self.root, e)
            raise RepositoryUnreadable(f"the model folder cannot be read: {e.strerror or e}") from e
        self._on_disk = set(names)
        return names

    def _model_folder(self, name: str) -> Path:
        """The model's folder; 400 where it is a link that leaves the model directory."""
        folder = self.root / name
        if folder.is_symlink() and not folder.resolve().is_relative_to(self.root.resolve()):
            raise LoadFailed(f"model {name!r}: its folder is a link that leaves the model directory; "
                             "it is not served")
        return folder

    def _version_folders(self, name: str) -> tuple[dict[int, Path], dict[str, str]]:
        """The model's version folders by number, and the folders refused (with why)."""
        found: dict[int, Path] = {}
        refused: dict[str, str] = {}
        duplicated: set[int] = set()
        folder = self._model_folder(name)
        inside = folder.resolve()
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not path.is_dir() or not path.name.isascii() or not path.name.isdigit():
                continue
            if len(path.name) > MAX_VERSION_DIGITS:
                continue  # no client could name it (check_version)
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                refused[path.name] = "a link that leaves the model's folder"
                continue
            number = int(path.name)
            if number in found:  # "01" and "1" are one version: serve neither
                refused[path.name] = refused[found[number].name] = (
                    f"duplicate: folders {found[number].name!r} and {path.name!r} are both version {number}")
                duplicated.add(number)
                continue
            found[number] = path
        for number in duplicated:
            found.pop(number)
        return found, refused

    def _scan(self, name: str) -> FolderScan:
        """Everything a load reads from the model's folder before loading (a worker thread)."""
        folders, refused = self._version_folders(name)
        return FolderScan(self._disk_signature(name), folders, refused, self._newest_policy(folders),
                          {number: manifest_fingerprint(path) for number, path in folders.items()})

    async def _off_loop(self, read: Callable[[str], T], name: str) -> T:
        """`read(name)` of one model's folder in a worker thread; OSError a logged 503."""
        try:
            return await asyncio.to_thread(read, name)
        except OSError as e:
            logger.error("model %s: its folder cannot be read: %s", name, e)
            raise RepositoryUnreadable(f"model {name!r}: its folder cannot be read: {e.strerror or e}") from e

    async def index(self) -> list[dict[str, str]]:
        """Every model version on disk or served, with its state and reason (Triton's index)."""
        entries: dict[tuple[str, str], VersionStatus] = dict(self._status)
        for name in await self.model_names_on_disk():
            try:
                folders, refused = await self._off_loop(self._version_folders, name)
            except (LoadFailed, RepositoryUnreadable) as e:  # logged; the others are still listed
                logger.warning("index: %s", e.message)
                continue
            for number in folders:
                entries.setdefault((name, str(number)), VersionStatus(State.UNAVAILABLE, "not loaded"))
            for folder, why in refused.items():
                entries[(name, folder)] = VersionStatus(State.UNAVAILABLE, why)
        return [{"name": n, "version": v, "state": str(s.state), "reason": s.reason}
                for (n, v), s in sorted(entries.items(), key=lambda e: (e[0][0], int(e[0][1])))]

    # --- changes --------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Load what the control mode says to load at start; returns the load failures."""
        mode = self.settings.model_control_mode
        names = await self.model_names_on_disk()
        if mode == "explicit":
            wanted = self.settings.load_model
            names = names if "*" in wanted else [n for n in wanted if n != "*"]
        elif not names and mode == "none":
            raise FileNotFoundError(f"no models found under {self.root} (expected <name>/<version>/manifest.json)")
        failures = []
        for name in names:
            try:
                await self.load(name)
            except ServingError as e:
                failures.append(e.message)
        return failures

    async def load(self, name: str) -> list[str]:
        """Read the model's folder again and serve what its version policy selects: new
        versions are loaded and warmed up beside the serving ones, then traffic switches;
        versions no longer selected, or replaced, are drained and unloaded. Returns the
        versions served after the change."""
        check_name(name)
        async with self._lock(name):
            scan = await self._off_loop(self._scan, name)
            folders, refused = scan.folders, scan.refused
            if not folders and not refused:
                raise ModelNotFound(f"no model {name!r} under {self.root} (expected {name}/<version>/manifest.json)")
            self._wanted.add(name)
            self._seen[name] = scan.signature
            for refused_folder, why in refused.items():
                self.metrics.model_load_failures.labels(name, "duplicate").inc()
                self._set_status(name, refused_folder, State.UNAVAILABLE, why, level=logging.ERROR)
            policy = self._policies[name] = scan.policy
            targets = [str(v) for v in policy.select(folders)]
            current = self._served.get(name, {})
            failures: dict[str, str] = dict(refused)
            loaded: dict[str, ServedModel] = {}
            for version in targets:
                existing = current.get(version)
                folder = folders[int(version)]
                if existing is not None and existing.fingerprint == scan.fingerprints[int(version)]:
                    loaded[version] = existing  # unchanged: keeps serving as it is
                    continue
                try:
                    loaded[version] = await self._load_version(name, version, folder)
                except LoadError as e:
                    failures[version] = e.message
            # Versions that failed are made up for by the ones serving now, newest first,
            # so a failed replacement leaves the previous version serving.
            for version in sorted(current, key=int, reverse=True):
                if len(loaded) >= len(targets):
                    break
                if version not in loaded and failures:
                    loaded[version] = current[version]
            self._switch(name, loaded)
            await self._retire_all([m for v, m in current.items() if loaded.get(v) is not m],
                                   "unloaded: not selected by the version policy")
            if failures:
                serving = f"; serving {sorted(loaded, key=int)}" if loaded else "; nothing of it is served"
                raise LoadFailed(f"model {name!r}: " + "; ".join(
                    f"version {v} failed to load: {why}" for v, why in failures.items()) + serving)
            return sorted(loaded, key=int)

    async def unload(self, name: str) -> None:
        """Stop serving every version of the model: each finishes its requests first."""
        check_name(name)
        async with self._lock(name):
            if name not in self._served and not self._has_status(name):
                raise ModelNotFound(f"unknown model {name!r}")
            self._wanted.discard(name)
            current = self._served.get(name, {})
            self._switch(name, {})
            await self._retire_all(list(current.values()), "unloaded")

    async def poll(self) -> None:
        """One scan: load each model whose folder changed since it was last read (a new or
        removed version folder, a changed file), unload those whose folder is gone. What
        failed to load is tried again only once its folder changes."""
        on_disk = set(await self.model_names_on_disk())
        for name in sorted(on_disk):
            try:
                signature = await self._off_loop(self._disk_signature, name)
            except RepositoryUnreadable:  # logged; the next scan tries again
                continue
            if self._seen.get(name) != signature:
                try:
                    await self.load(name)
                except ServingError as e:
                    logger.error("poll: %s", e.message)
        for name in sorted(set(self._served) - on_disk):
            await self.unload(name)

    def _disk_signature(self, name: str) -> tuple[tuple[str, int, int], ...]:
        """Every file of the model's folder with its size and modification time."""
        entries = []
        for path in sorted((self.root / name).rglob("*")):
            try:
                info = path.stat()
            except OSError:  # removed while scanning: the next scan sees it gone
                continue
            if stat.S_ISREG(info.st_mode):
                entries.append((str(path.relative_to(self.root)), info.st_size, info.st_mtime_ns))
        return tuple(entries)

    async def stop(self) -> None:
        names = list(self._served)
        self._wanted.clear()
        models = self.all()
        for name in names:
            self._switch(name, {})
        await self._retire_all(models, "the server is shutting down")

    # --- the steps of a change ------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _newest_policy(self, folders: dict[int, Path]) -> VersionPolicy:
        """The newest readable manifest's version policy, else the server's."""
        for number in sorted(folders, reverse=True):
            try:
                manifest = load_manifest(folders[number], verify_files=False)
            except ManifestError:
                continue
            return manifest.version_policy or self.default_policy
        return self.default_policy

    async def _load_version(self, name: str, version: str, folder: Path) -> ServedModel:
        self._set_status(name, version, State.LOADING, "")
        started = time.monotonic()
        try:
            hung_up = self.metrics.requests_dropped.labels(name, "client_gone")
            model = await asyncio.to_thread(load_version, folder, self.settings, self.ort,
                                            self.metrics.batch_observer(name), lambda _: hung_up.inc())
        except LoadError as e:
            self.metrics.model_loads.labels(name, "failed").inc()
            self.metrics.model_load_failures.labels(name, e.kind).inc()
            self._set_status(name, version, State.UNAVAILABLE, e.message, level=logging.ERROR)
            raise
        self.metrics.model_load_seconds.labels(name).observe(time.monotonic() - started)
        self.metrics.model_loads.labels(name, "ok").inc()
        model.batcher.on_restart = lambda _: self.metrics.batcher_restarts.labels(name).inc()
        model.batcher.start()
        self.metrics.watch_queue(name, model, lambda: model.batcher.queued_rows)
        return model

    def _switch(self, name: str, versions: dict[str, ServedModel]) -> None:
        """Route the model's requests to `versions` from now on, in one step."""
        served = dict(self._served)
        newest = dict(self._newest)
        if versions:
            served[name] = versions
            newest[name] = versions[max(versions, key=int)]
        else:
            served.pop(name, None)
            newest.pop(name, None)
        self._served, self._newest = served, newest
        for version, model in versions.items():
            self._set_status(name, version, State.READY, "")
            logger.debug("model %s v%s serving (%s variant on %s)", name, version, model.variant,
                         model.session.providers[0])

    async def _retire_all(self, models: list[ServedModel], reason: str) -> None:
        """Drain and unload models already out of the routing table. A version replaced by
        a reload of itself keeps the READY state of its successor."""
        gone = [m for m in models if m.version not in self._served.get(m.name, {})]
        for model in gone:
            self._set_status(model.name, model.version, State.UNLOADING, "finishing its requests")
        await asyncio.gather(*(self._retire(m) for m in models))
        for model in gone:
            if model.version not in self._served.get(model.name, {}):
                self._set_status(model.name, model.version, State.UNAVAILABLE, reason)

    async def _retire(self, model: ServedModel) -> None:
        await model.retire(self.settings.shutdown_grace_s)
        self.metrics.unwatch_queue(model.name, model)
        for gauge in (self.metrics.model_stalled, self.metrics.model_breaker_open):
            try:
                gauge.remove(model.name, model.version)
            except KeyError:
                pass
        self.metrics.model_unloads.labels(model.name).inc()

    def _set_status(self, name: str, version: str, state: State, reason: str, level: int = logging.INFO) -> None:
        before = self._status.get((name, version))
        if before is not None and before.state is state and before.reason == reason:
            return
        self._status[(name, version)] = VersionStatus(state, reason)
        self.metrics.set_state(name, version, str(state))
        logger.log(level, "model %s version %s: %s%s", name, version, state, f" ({reason})" if reason else "",
                   extra={"fields": {"event": "model_state", "model": name, "version": version,
                                     "state": str(state), "reason": reason}})

    def stats_of(self, name: str) -> list[tuple[str, ModelStats]]:
        return [(v, m.stats) for v, m in sorted(self._served.get(name, {}).items(), key=lambda e: int(e[0]))]

    def watch_health(self) -> None:
        """Check every served model for a batch running past the inference timeout, and
        publish each one's health. Set here rather than read at scrape time: a gauge
        function would close over the model and keep it alive after it is unloaded."""
        for model in self.all():
            stalled = model.health.check_stalled()
            self.metrics.model_stalled.labels(model.name, model.version).set(float(stalled))
            self.metrics.model_breaker_open.labels(model.name, model.version).set(
                float(not stalled and not model.health.healthy))
