"""The model repository: which model versions exist on disk, which are served, and every
change between the two (load, replace, unload) while requests keep flowing.

It puts four units together: the folders on disk (disk.py), the routing table
(routing.py), each version's state (states.py), and loading and retiring one version
(loader.py). Its version policy (app/manifest.py `VersionPolicy`) says which versions of
a model are served. Each change is made beside what serves: a new version is loaded and
warmed up in a worker thread, then the routing table is switched in one step, and the
versions it replaced finish their requests before they are unloaded. A version that
fails to load is UNAVAILABLE with its reason; every other model, and the versions
already serving, go on serving. Versions are numbers here; they are strings only where a
client reads or writes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from app.errors import InvalidInput, ModelNotFound, ModelNotReady, NoModelsFound, ServingError
from app.loading import LoadError
from app.manifest import VersionPolicy
from app.model_facts import FactsError, ModelFacts, from_triton_json
from app.observability.metrics import Metrics
from app.observability.stats import ModelStats
from app.repository.disk import ModelFolders, Signature
from app.repository.errors import LoadFailed, RepositoryUnreadable
from app.repository.loader import VersionLoader
from app.repository.names import check_name, parse_version
from app.repository.routing import RoutingTable
from app.repository.states import State, VersionStates, VersionStatus
from app.runtime import OrtOptions
from app.sequences import Peers
from app.served_model import Lease, ServedModel
from app.settings import Settings

logger = logging.getLogger(__name__)


def load_config(parameters: Mapping[str, object]) -> object:
    """The `config` of a load request's parameters (HTTP's object, gRPC's map as plain values);
    its `file:` parameters are app/repository/uploads.py's."""
    return parameters.get("config")


def unload_dependents(parameters: Mapping[str, object]) -> bool:
    """Triton's `unload_dependents` parameter of an unload request (HTTP's `parameters`, gRPC's
    map as plain values): whether an ensemble's step models are unloaded with it."""
    value = parameters.get("unload_dependents", False)
    if not isinstance(value, bool):
        raise InvalidInput("parameters.unload_dependents must be true or false")
    return value


def load_override(config: object, name: str) -> ModelFacts | None:
    """Triton's `config` parameter of a load request (HTTP's `parameters.config`, gRPC's
    `parameters["config"]`): a model configuration in JSON, as a string; None when absent."""
    if config is None:
        return None
    if not isinstance(config, str):
        raise InvalidInput("parameters.config must be a string holding the model configuration as JSON")
    try:
        return from_triton_json(config, name, "parameters.config")
    except FactsError as e:
        raise InvalidInput(str(e)) from e


class ModelRepository:
    def __init__(self, settings: Settings, ort: OrtOptions, metrics: Metrics, peers: Peers | None = None) -> None:
        """`peers`: the server's other workers, for stateful models' sequences (app/sequence_peers.py)."""
        self.settings = settings
        self.metrics = metrics
        self.default_policy = VersionPolicy.parse(settings.version_policy)
        self.disk = ModelFolders(settings.model_dir, self.default_policy)
        self.routes = RoutingTable()
        self.states = VersionStates(metrics)
        self.loader = VersionLoader(settings, ort, metrics, self.states, find_model=self.get, peers=peers)
        self._policies: dict[str, VersionPolicy] = {}
        self._wanted: set[str] = set()  # models that should be served: readiness waits for them
        self._started = False  # the models loaded at start have been (strict_readiness off: ready)
        self._locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, Signature] = {}  # each folder as last read
        self._overrides: dict[str, ModelFacts] = {}  # a load request's configuration, until the next load
        self._uploads: dict[str, Path] = {}  # a load request's files as a model folder, until the next load

    # --- requests -------------------------------------------------------------------

    def lease(self, name: str, version: str | None = None) -> Lease:
        """`async with repository.lease(name, version) as model`: the model a request should
        use, held until the block ends."""
        return self.get(name, version).lease()

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The version a client names (the newest served without one): 400 for a name or
        version no model can have, 404 for one not there, 503 for one not serving."""
        model = self.routes.find(name, None if version is None else parse_version(version))
        if model is None:
            raise self._why_not_served(name, version)
        if not model.ready:
            model.check()
        return model

    def _why_not_served(self, name: str, version: str | None) -> ServingError:
        check_name(name)
        number = None if version is None else parse_version(version)
        served = self.routes.versions(name)
        if served and number is not None:
            status = self.states.get(name, number)
            if status is not None and status.state is not State.READY:
                return ModelNotReady(f"model {name!r} version {number} is {status.state}: {status.reason}")
            return ModelNotFound(f"model {name!r} has no version {version!r}; versions served: "
                                 f"{[str(v) for v in served]}")
        known = self.states.of(name)
        if not known and name in self.disk.found:
            return ModelNotReady(f"model {name!r} is not loaded (control mode {self.settings.model_control_mode!r}: "
                                 "load it through the repository API)")
        if not known:
            return ModelNotFound(f"unknown model {name!r}; served models: {self.names()}")
        reasons = "; ".join(f"version {v} {s.state}: {s.reason}" for v, s in known.items())
        return ModelNotReady(f"model {name!r} is not being served ({reasons})")

    def all(self) -> list[ServedModel]:
        return self.routes.all()

    def names(self) -> list[str]:
        return self.routes.names()

    def serves(self, name: str) -> bool:
        """Whether `name` is a model of this repository (for labels that must name real models)."""
        return bool(self.routes.versions(name)) or name in self.disk.found or self.states.known(name)

    def versions_of(self, name: str) -> list[str]:
        """The model's served versions, oldest first, as clients write them."""
        return [str(v) for v in self.routes.versions(name)]

    def policy_of(self, name: str) -> VersionPolicy:
        return self._policies.get(name, self.default_policy)

    def stats_of(self, name: str) -> list[tuple[str, ModelStats]]:
        return [(m.version, m.stats) for m in self.routes.versions(name).values()]

    @property
    def ready(self) -> bool:
        """Every model that should be served is serving, and healthy; without strict
        readiness, the start's loads are done."""
        if not self.settings.strict_readiness:
            return self._started
        return all(any(m.ready for m in self.routes.versions(name).values()) for name in self._wanted)

    async def index(self) -> list[dict[str, str | bool]]:
        """Every model version on disk or served, with its state and reason (Triton's index)."""
        entries = self.states.all()
        on_disk: set[tuple[str, int]] = set()
        unread: set[str] = set()
        for name in await self.disk.names():
            try:
                folders, refused = await self.disk.versions(name)
            except (LoadFailed, RepositoryUnreadable) as e:  # logged; the others are still listed
                logger.warning("index: %s", e.message)
                unread.add(name)
                continue
            for number in folders:
                entries.setdefault((name, number), _NOT_LOADED)
            for number, why in refused.items():
                entries[(name, number)] = VersionStatus(State.UNAVAILABLE, why)
            on_disk.update((name, number) for number in (*folders, *refused))
        # A version whose folder is gone is listed only while it still serves (until the
        # next load or poll unloads it), not as it last was.
        for key in [k for k in entries if k not in on_disk and k[0] not in unread]:
            if self.routes.find(key[0], key[1]) is None:
                del entries[key]
        for model in self.all():  # loaded, but not answering now: why (an ensemble's step, a breaker)
            key = (model.name, model.manifest.version)
            if key in entries and entries[key].state is State.READY:
                try:
                    model.check()
                except ServingError as e:
                    entries[key] = VersionStatus(State.READY, f"not ready: {e.message}")
        unverified = {(m.name, m.manifest.version) for m in self.all() if not m.verified}
        return [{"name": n, "version": str(v), "state": str(s.state), "reason": s.reason}
                | ({"verified": False} if (n, v) in unverified else {})  # a drop-in: no digest to check
                for (n, v), s in sorted(entries.items())]

    # --- changes --------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Load what the control mode says to load at start; returns the load failures."""
        mode = self.settings.model_control_mode
        names = await self.disk.names()
        if mode == "explicit":
            wanted = self.settings.load_model
            names = names if "*" in wanted else [n for n in wanted if n != "*"]
        elif not names and mode == "none":
            hint = "; ".join(self.disk.misplaced.values()) or "expected <name>/<version>/manifest.json or model.onnx"
            raise NoModelsFound(f"no models found under {self.disk.where} ({hint})")
        failures = []
        for name in names:
            try:
                await self.load(name)
            except ServingError as e:
                failures.append(e.message)
        self._started = True
        return failures

    async def load(self, name: str, override: ModelFacts | None = None, uploaded: Path | None = None) -> list[str]:
        """Read the model's folder again and serve what its version policy selects: new
        versions are loaded and warmed up beside the serving ones, then traffic switches;
        versions no longer selected, or replaced, are drained and unloaded. Returns the
        versions served after the change. `override` (Triton's `parameters.config`) goes
        on top of what the folder says, for this load and the polls until the next load.
        `uploaded`: the model's folder made of the load's files (app/repository/uploads.py),
        read instead of the model directory's until a load without files."""
        check_name(name)
        if override is None:
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = override
        before = self._uploads.pop(name, None)
        if uploaded is not None:
            self._uploads[name] = uploaded
        try:
            served = await self._load(name)
        except BaseException:  # what serves on was read from where it was
            self._uploads.pop(name, None)
            if before is not None:
                self._uploads[name] = before
            raise
        if self.settings.model_control_mode == "explicit":
            await self._load_steps(name, {name})
        return served

    def upload_of(self, name: str) -> Path | None:
        """The folder of files the model's last load sent, where it is served from (None: its
        folder in the model directory)."""
        return self._uploads.get(name)

    async def _load_steps(self, name: str, seen: set[str]) -> None:
        """An ensemble's step models that are not served yet, loaded with it (as Triton's
        explicit mode does), and theirs in turn: LoadFailed names the step model that failed."""
        for model in list(self.routes.versions(name).values()):
            for step in model.manifest.ensemble or []:
                if step.model in seen:
                    continue
                seen.add(step.model)
                if not self.routes.versions(step.model):
                    try:
                        self._overrides.pop(step.model, None)
                        self._uploads.pop(step.model, None)
                        await self._load(step.model)
                    except ServingError as e:
                        raise LoadFailed(f"model {name!r}: its step model {step.model!r} could not be loaded: "
                                         f"{e.message}") from e
                await self._load_steps(step.model, seen)

    async def _load(self, name: str) -> list[str]:
        override = self._overrides.get(name)
        async with self._lock(name):
            scan = await self.disk.scan(name, self._uploads.get(name))
            if not scan.folders and not scan.refused:
                raise ModelNotFound(f"no model {name!r} under {self.disk.where} "
                                    f"(expected {name}/<version>/manifest.json)")
            self._wanted.add(name)
            self._seen[name] = scan.signature
            for number, why in scan.refused.items():
                self.metrics.model_load_failures.labels(name, "duplicate").inc()
                self.states.set(name, number, State.UNAVAILABLE, why, level=logging.ERROR)
            policy = self._policies[name] = override.version_policy if override and override.version_policy else scan.policy
            targets = policy.select(scan.folders)
            current = self.routes.versions(name)
            failures: dict[int, str] = dict(scan.refused)
            loaded: dict[int, ServedModel] = {}
            for version in targets:
                existing = current.get(version)
                fingerprint = scan.fingerprints[version] + (override.model_dump_json() if override else "")
                if existing is not None and existing.fingerprint == fingerprint:
                    loaded[version] = existing  # unchanged: keeps serving as it is
                    continue
                try:
                    loaded[version] = await self.loader.load(name, version, scan.folders[version], override)
                except LoadError as e:
                    failures[version] = e.message
            # Versions that failed are made up for by the ones serving now, newest first,
            # so a failed replacement leaves the previous version serving.
            for version in sorted(current, reverse=True):
                if len(loaded) >= len(targets):
                    break
                if version not in loaded and failures:
                    loaded[version] = current[version]
            self._switch(name, loaded)
            # a version refused now (its folder doubled) says why it stopped, not the policy
            await self._retire_all([m for v, m in current.items() if loaded.get(v) is not m],
                                   "unloaded: not selected by the version policy", scan.refused)
            if failures:
                serving = f"; serving {[str(v) for v in sorted(loaded)]}" if loaded else "; nothing of it is served"
                raise LoadFailed(f"model {name!r}: " + "; ".join(
                    f"version {v} failed to load: {why}" for v, why in failures.items()) + serving)
            return [str(v) for v in sorted(loaded)]

    async def unload(self, name: str, dependents: bool = False) -> None:
        """Stop serving every version of the model: each finishes its requests first.
        `dependents` (Triton's unload_dependents): an ensemble's step models too, and theirs,
        but for those a model still served runs as a step."""
        check_name(name)
        async with self._lock(name):
            current = self.routes.versions(name)
            if not current and not self.states.known(name):
                raise ModelNotFound(f"unknown model {name!r}")
            self._wanted.discard(name)
            self._uploads.pop(name, None)
            self._switch(name, {})
            await self._retire_all(list(current.values()), "unloaded")
        if dependents:
            for step in sorted({s.model for m in current.values() for s in m.manifest.ensemble or []}):
                if self.routes.versions(step) and not self._runs_as_a_step(step):
                    await self.unload(step, dependents=True)

    def _runs_as_a_step(self, name: str) -> bool:
        return any(step.model == name for m in self.all() for step in m.manifest.ensemble or [])

    async def poll(self) -> None:
        """One scan: load each model whose folder changed since it was last read (a new or
        removed version folder, a changed file), unload those whose folder is gone. What
        failed to load is tried again only once its folder changes."""
        on_disk = set(await self.disk.names())
        for name in sorted(on_disk):
            try:
                signature = await self.disk.signature(name)
            except RepositoryUnreadable:  # logged; the next scan tries again
                continue
            if self._seen.get(name) != signature:
                try:
                    await self._load(name)
                except ServingError as e:
                    logger.error("poll: %s", e.message)
        for name in sorted(set(self.routes.names()) - on_disk):
            await self.unload(name)

    async def stop(self) -> None:
        self._wanted.clear()
        self._started = False
        models = self.all()
        for name in self.routes.names():
            self.routes.switch(name, {})
        await self._retire_all(models, "the server is shutting down")

    def watch_health(self) -> None:
        """Check every served model for a batch running past the inference timeout, and
        publish each one's health. Set here rather than read at scrape time: a gauge
        function would close over the model and keep it alive after it is unloaded."""
        for model in self.all():
            stalled = model.health.check_stalled()
            self.metrics.model_stalled.labels(model.name, model.version).set(float(stalled))
            self.metrics.model_breaker_open.labels(model.name, model.version).set(
                float(not stalled and not model.health.healthy))

    # --- the steps of a change ------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _switch(self, name: str, versions: dict[int, ServedModel]) -> None:
        self.routes.switch(name, versions)
        for version, model in versions.items():
            self.states.set(name, version, State.READY)
            logger.debug("model %s v%s serving (%s variant on %s)", name, version, model.variant, model.device)

    async def _retire_all(self, models: list[ServedModel], reason: str, reasons: Mapping[int, str] | None = None) -> None:
        """Drain and unload models already out of the routing table, each UNAVAILABLE with
        `reasons` for its version, else `reason`. A version replaced by a reload of itself
        keeps the READY state of its successor."""
        def replaced(model: ServedModel) -> bool:
            return self.routes.find(model.name, model.manifest.version) is None

        gone = [m for m in models if replaced(m)]
        for model in gone:
            self.states.set(model.name, model.manifest.version, State.UNLOADING, "finishing its requests")
        await asyncio.gather(*(self.loader.retire(m) for m in models))
        for model in gone:
            if replaced(model):
                version = model.manifest.version
                self.states.set(model.name, version, State.UNAVAILABLE, (reasons or {}).get(version, reason))


_NOT_LOADED = VersionStatus(State.UNAVAILABLE, "not loaded")
