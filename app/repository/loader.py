"""Bringing one version into service and taking it out: loaded and warmed up in a worker
thread, its batcher started and watched, its part of the response cache given; drained,
stopped and forgotten by the metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from app.ensemble import FindModel
from app.loading import Hooks, LoadError, load_version
from app.model_facts import ModelFacts
from app.observability.metrics import Metrics
from app.repository.states import State, VersionStates
from app.response_cache import ResponseCache
from app.runtime import OrtOptions
from app.sequences import Peers
from app.served_model import ServedModel
from app.settings import Settings
from app.tuning import MemoryReturn

logger = logging.getLogger(__name__)

UNLOADED_TRIM_AFTER_S = 1.0
"""A version's memory (its sessions, a few MB to GBs) goes back to the system this long after
it is unloaded: by then the last of its references, the callers' that retired it, are gone."""


class VersionLoader:
    def __init__(self, settings: Settings, ort: OrtOptions, metrics: Metrics, states: VersionStates,
                 find_model: FindModel | None = None, peers: Peers | None = None) -> None:
        self.settings = settings
        self.peers = peers
        """The other workers, for the sequences of stateful models (app/sequence_peers.py); None: one worker."""
        self.find_model = find_model
        """The repository's lookup, which an ensemble's steps use (app/ensemble.py)."""
        self.ort = ort
        self.metrics = metrics
        self.states = states
        self.cache = ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes else None
        """Answers kept for the versions whose manifest asks (one cache per worker)."""
        self.memory = MemoryReturn(UNLOADED_TRIM_AFTER_S) if settings.trim_memory else None
        """Freed sessions' pages handed back: unreturned, each new version's load grew the
        resident size until about ten had come and gone (docs/benchmarks.md, "One heap")."""

    async def load(self, name: str, version: int, folder: Path, override: ModelFacts | None = None) -> ServedModel:
        """The version loaded, warmed up and taking requests; LoadError (its state then
        UNAVAILABLE with the reason) if it cannot be. `override`: a load request's configuration."""
        self.states.set(name, version, State.LOADING)
        started = time.monotonic()
        metrics = self.metrics
        hung_up, restarts = metrics.requests_dropped.labels(name, "client_gone"), metrics.batcher_restarts.labels(name)
        hooks = Hooks(on_batch=metrics.batch_observer(name), on_hang_up=lambda _: hung_up.inc(),
                      on_restart=lambda _: restarts.inc())
        try:
            model = await asyncio.to_thread(load_version, folder, self.settings, self.ort, hooks, override,
                                          self.find_model)
        except LoadError as e:
            metrics.model_loads.labels(name, "failed").inc()
            metrics.model_load_failures.labels(name, e.kind).inc()
            self.states.set(name, version, State.UNAVAILABLE, e.message, level=logging.ERROR)
            raise
        metrics.model_load_seconds.labels(name).observe(time.monotonic() - started)
        metrics.model_loads.labels(name, "ok").inc()
        if model.manifest.response_cache:
            if self.cache is not None:
                model.cache = self.cache.part()
            else:
                logger.warning("%s v%s asks for the response cache, but response_cache_bytes is 0: answering "
                               "every request from the model", name, version)
        if model.sequences is not None:
            model.sequences.peers = self.peers
        batcher = model.batcher
        if batcher is not None:  # None: an ensemble, whose steps' models queue its requests
            batcher.start()
            metrics.watch_queue(name, model, lambda: batcher.queued_rows)
        return model

    async def retire(self, model: ServedModel) -> None:
        """Once no request holds it, finish its queued and running requests, then unload it."""
        await model.retire(self.settings.shutdown_grace_s)
        self.metrics.unwatch_queue(model.name, model)
        for gauge in (self.metrics.model_stalled, self.metrics.model_breaker_open):
            try:
                gauge.remove(model.name, model.version)
            except KeyError:
                pass
        self.metrics.model_unloads.labels(model.name).inc()
        if self.memory is not None:
            self.memory.ask()
