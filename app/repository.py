"""The model repository: finds models/<name>/<version>/, loads, warms up and serves each one."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.batching import BatchPolicy, BatchRecord, DynamicBatcher
from app.codecs import Codec, classify_batch, make_codec
from app.deadlines import Deadlines
from app.errors import DeadlineExceeded, ModelNotFound, ModelNotReady
from app.manifest import Manifest, TensorSpec, load_manifest, newest, version_folders
from app.observability.metrics import Metrics
from app.observability.stats import ModelStats
from app.runtime import OrtModel, OrtOptions, choose_variant
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    manifest: Manifest
    directory: Path
    variant: str
    session: OrtModel
    batcher: DynamicBatcher
    codec: Codec
    stats: ModelStats = field(default_factory=ModelStats)
    ready: bool = False

    def __post_init__(self) -> None:
        self.deadlines = Deadlines(self._expire)

    @property
    def name(self) -> str:
        return self.manifest.name

    @functools.cached_property
    def version(self) -> str:  # cached: read for every response
        return str(self.manifest.version)

    async def infer(self, inputs: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """Queue and await one request's (already validated) rows; past `timeout_s`, 504."""
        started = time.monotonic()
        future = self.batcher.submit(inputs)
        # Not asyncio.wait_for: no extra task per request on the hot path.
        self.deadlines.watch(future, timeout_s)
        ok = False
        try:
            outputs = await future
            ok = True
            return outputs
        finally:
            self.stats.record_request(time.monotonic() - started, ok)

    def _expire(self, future: asyncio.Future[dict[str, np.ndarray]], timeout_s: float) -> None:
        future.set_exception(DeadlineExceeded(f"model {self.name!r} did not answer within {timeout_s:g} s"))

    def warm_up(self) -> None:
        """Run once per power-of-two batch size up to the maximum, so the first real
        requests (and on CUDA every batch shape bucket) do not pay for first-run set-up."""
        sizes, size = [], 1
        while size < self.batcher.policy.max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(self.batcher.policy.max_batch_size)
        for n in sizes:
            self.session.run({spec.name: _dummy(spec, n) for spec in self.manifest.inputs})


def batch_policy(settings: Settings, manifest: Manifest) -> BatchPolicy:
    """The one place a model's batching is decided: the manifest's per-model values unless
    the settings override them, and the server-wide settings."""
    s, own = settings, manifest.batching
    delay_ms = s.max_queue_delay_ms if s.max_queue_delay_ms is not None else own.max_queue_delay_ms
    return BatchPolicy(
        max_batch_size=s.max_batch_size or own.max_batch_size,
        max_queue_delay_s=delay_ms / 1000,
        max_inflight_batches=s.max_inflight_batches,
        inference_threads=s.inference_threads,
        max_queue_size=s.max_queue_size,
        retry_after_s=s.retry_after_s,
        inference_niceness=s.inference_niceness,
    )


def _dummy(spec: TensorSpec, rows: int) -> np.ndarray:
    shape = [rows] + [8 if d == -1 else d for d in spec.shape[1:]]
    fill = 0 if spec.numpy_dtype.startswith("float") else 1  # ids and lengths of 1 are valid
    return np.full(shape, fill, dtype=spec.numpy_dtype)


def _sequence_length(manifest: Manifest) -> Callable[[Mapping[str, np.ndarray]], int] | None:
    """For models with a variable-length input, a function giving a request's padded length."""
    for spec in manifest.inputs:
        if len(spec.shape) >= 2 and spec.shape[1] == -1:
            name = spec.name
            return lambda inputs: int(inputs[name].shape[1])
    return None


class ModelRepository:
    def __init__(self, settings: Settings, ort: OrtOptions, metrics: Metrics) -> None:
        self.settings = settings
        self.ort = ort
        self.metrics = metrics
        self._models: dict[str, dict[str, ServedModel]] = {}

    def discover(self) -> list[Path]:
        root = self.settings.model_dir
        if not root.is_dir():
            raise FileNotFoundError(f"model directory {root} does not exist")
        return sorted(folder for model in root.iterdir() if model.is_dir() for folder in version_folders(model))

    async def load_all(self) -> None:
        folders = self.discover()
        if not folders:
            raise FileNotFoundError(f"no models found under {self.settings.model_dir} "
                                    "(expected <name>/<version>/manifest.json)")
        for folder in folders:
            model = await asyncio.to_thread(self._load, folder)
            self._models.setdefault(model.name, {})[model.version] = model
            model.batcher.start()
            model.ready = True
            logger.info("model %s v%s ready: %s variant on %s, max_batch_size=%d, max_queue_delay=%.1fms",
                        model.name, model.version, model.variant, model.session.providers[0],
                        model.batcher.policy.max_batch_size, model.batcher.policy.max_queue_delay_s * 1000)

    def _load(self, folder: Path) -> ServedModel:
        manifest = load_manifest(folder)
        variant = choose_variant(manifest, self.ort.providers, self.settings.variant)
        session = OrtModel(folder / manifest.variants[variant].file, self.ort)
        policy = batch_policy(self.settings, manifest)
        stats = ModelStats()
        observe = self.metrics.batch_observer(manifest.name)

        def on_batch(record: BatchRecord) -> None:
            stats.record_batch(record)
            observe(record)

        logits = manifest.outputs[0].name

        def run_batch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return classify_batch(session.run(inputs), logits)

        batcher = DynamicBatcher(manifest.name, run_batch, policy, length_of=_sequence_length(manifest),
                                 on_batch=on_batch)
        self.metrics.watch_queue(manifest.name, lambda: batcher.queued_rows)
        model = ServedModel(manifest, folder, variant, session, batcher, make_codec(manifest, folder), stats)
        if self.settings.warmup:
            model.warm_up()
        return model

    async def stop(self) -> None:
        for model in self.all():
            model.ready = False
        await asyncio.gather(*(m.batcher.stop(self.settings.shutdown_grace_s) for m in self.all()))
        for model in self.all():
            model.deadlines.close()

    def all(self) -> list[ServedModel]:
        return [m for versions in self._models.values() for m in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._models)

    def serves(self, name: str) -> bool:
        """Whether `name` is a model of this repository (for labels that must name real models)."""
        return name in self._models

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}; served models: {self.names()}")
        if version is None:
            model = versions[newest(versions)]
        elif version in versions:
            model = versions[version]
        else:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: {sorted(versions, key=int)}")
        if not model.ready:
            raise ModelNotReady(f"model {name!r} version {model.version} is not ready")
        return model

    @property
    def ready(self) -> bool:
        models = self.all()
        return bool(models) and all(m.ready for m in models)
