"""Turning one version folder into a ServedModel, or a LoadError that says why not.

Everything the model reads is checked against the manifest first, and ONNX Runtime and the
codec are given the checked bytes, not the files (app/manifest.py `read_verified`). Runs
in a worker thread: nothing here touches the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from app import custom_ops
from app.batching import BatchPolicy, BatchRecord, DynamicBatcher
from app.batching.policy import GROUPING_WINDOW, NO_BOUNDS, QueueBounds
from app.batching.request import PendingRequest
from app.codecs import InputLimits, classify_batch, make_codec
from app.completion import complete, pads_unmasked
from app.ensemble import EnsembleModel, FindModel, ensemble_manifest
from app.graph import DROP_IN_FILE, GraphError, disagreements, shapeless_tensors
from app.manifest import (
    MANIFEST_FILE,
    TENSORS_TASK,
    Manifest,
    ManifestError,
    QueuePolicy,
    Variant,
    load_manifest,
    outside,
    read_verified,
    sha256_of_bytes,
)
from app.model_facts import NO_FACTS, FactsError, ModelFacts, describe, facts_files, read_facts
from app.observability.stats import ModelStats
from app.preprocess import ImageLimits
from app.reshaping import Reshaper
from app.runtime import OrtModel, OrtOptions, choose_variant
from app.sequences import SequenceBook
from app.served_model import ServedModel
from app.settings import Settings
from app.supervision import BatchHealth
from app.warmup_samples import WarmupError, sample_arrays, sample_inputs

logger = logging.getLogger(__name__)


class LoadError(Exception):
    """A version that cannot be served; `kind` is a short category for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def manifest_fingerprint(folder: Path) -> str:
    """The manifest as it is on disk now (without one: the configuration files' contents and
    the size and time of every other file in the version's folder and in its folders, the
    graph's external data among them): a change means the version must be reloaded."""
    try:
        return sha256_of_bytes((folder / MANIFEST_FILE).read_bytes())
    except OSError:
        pass
    parts = []
    try:
        facts = facts_files(folder)
        for path in facts:
            parts.append(f"{path.name}:{sha256_of_bytes(path.read_bytes())}")
        for path in sorted(folder.iterdir()):
            # one level down as well: a graph kept in a folder of its own, with its external data
            inner = sorted(path.iterdir()) if path.is_dir() and not path.name.startswith(".") else []
            for file in [path, *inner]:
                if file.is_file() and file not in facts and not file.name.startswith("."):
                    info = file.stat()
                    parts.append(f"{file.relative_to(folder)}:{info.st_size}:{info.st_mtime_ns}")
    except OSError:
        return ""
    return "|".join(parts)


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).exists()


def holds_a_model(folder: Path) -> bool:
    """Whether the folder has a version's files: a manifest, or a drop-in model (a file, or
    Triton's folder of that name)."""
    return has_manifest(folder) or (folder / DROP_IN_FILE).exists()


@dataclass(frozen=True)
class Hooks:
    """What the service is told of a loaded version's batcher (app/repository/loader.py
    counts them in its metrics)."""

    on_batch: Callable[[BatchRecord], None] | None = None
    """Each batch that ran, after the version's own health and statistics saw it."""
    on_hang_up: Callable[[PendingRequest], None] | None = None
    """Each request dropped because its client hung up."""
    on_restart: Callable[[BaseException], None] | None = None
    """Each time the batch-forming task died and was restarted."""


def load_version(folder: Path, settings: Settings, ort: OrtOptions, hooks: Hooks = Hooks(),
                 override: ModelFacts | None = None, find_model: FindModel | None = None) -> ServedModel:
    """Read, verify, load and (if the settings say so) warm up one version; not started. A
    folder without a manifest has its configuration completed from the graph and whatever
    config.json or config.pbtxt say (app/completion.py); it has no digest to check its file
    against. `override` (a load request's configuration) goes on top of either. An ensemble
    (its configuration's steps) runs the models `find_model` finds (the repository's)."""
    fingerprint = manifest_fingerprint(folder) + (override.model_dump_json() if override else "")
    options = replace(ort, wide_batch_rows=settings.wide_batch_rows)
    drop_in = not has_manifest(folder)
    if drop_in:
        facts = _facts(folder, override)
        if facts.ensemble is not None:
            try:
                ensemble = ensemble_manifest(folder, facts)
            except FactsError as e:
                raise LoadError("config", str(e)) from e
            return _ensemble(folder, settings, ensemble, facts, fingerprint, find_model)
        manifest, variant, session, extras = _completed(folder, settings, options, facts)
    else:
        try:
            manifest = load_manifest(folder, verify_files=False)
        except ManifestError as e:
            raise LoadError("manifest", str(e)) from e
        if manifest.ensemble is not None:
            if override is not None and override.model_fields_set - {"version_policy"}:
                raise LoadError("config", f"{folder}: an ensemble's load takes no configuration but its version_policy")
            return _ensemble(folder, settings, manifest, override or NO_FACTS, fingerprint, find_model)
        variant, session, extras = _with_manifest(folder, manifest, settings, options, override)
        facts = override or NO_FACTS
        if override is not None:
            manifest = _overridden(folder, manifest, override)
    try:
        codec = make_codec(manifest, extras, input_limits(settings))
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise LoadError("manifest", f"{folder}: {type(e).__name__}: {e}") from e
    health = BatchHealth(f"{manifest.name} v{manifest.version}", settings.failure_threshold,
                         settings.failure_cooldown_s, settings.inference_timeout_s)
    logits = manifest.outputs[0].name
    stats = ModelStats()
    classifies = manifest.task != TENSORS_TASK
    softmax = manifest.scores == "logits"

    policy = batch_policy(settings, manifest)

    reshaper = Reshaper.for_manifest(manifest)  # the model's inputs it reshapes, run_batch its outputs

    def run_batch(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        outputs = session.run(inputs, may_go_wide=policy.large(rows, requests))
        if reshaper is not None:
            outputs = reshaper.to_clients(outputs)
        return classify_batch(outputs, logits, softmax) if classifies else outputs

    if not manifest.batches:
        # Each request is one item of a batch of one (app/protocol/v2.py adds the axis): the
        # model is given the tensors as the client sent them ([0, ...]: a scalar stays an array,
        # where [0] would make it a numpy scalar, which ORT refuses).
        def run_batch(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
            outputs = session.run({name: array[0, ...] for name, array in inputs.items()})
            rows = {name: array[np.newaxis] for name, array in outputs.items()}
            return reshaper.to_clients(rows) if reshaper is not None else rows

    def record(batch: BatchRecord) -> None:
        # A request's value the model refused is the client's mistake: it does not count
        # toward the breaker (nor does it clear a run of real failures).
        health.batch_ended(batch.batch_id, batch.ok or batch.refused, batch.error, counts=not batch.refused)
        stats.record_batch(batch)
        if hooks.on_batch is not None:
            hooks.on_batch(batch)

    batcher = DynamicBatcher(manifest.name, run_batch, policy,
                             length_of=_sequence_length(manifest), on_batch=record,
                             on_batch_start=health.batch_started, on_hang_up=hooks.on_hang_up,
                             on_restart=hooks.on_restart, exact_shapes=pads_unmasked(manifest))
    try:
        samples = [(sample_arrays(sample, manifest, folder.parent), sample.count) for sample in facts.warmup or []]
    except WarmupError as e:
        raise LoadError("config", f"{folder}: {e}") from e
    model = ServedModel(manifest, variant, session, batcher, codec, health, stats, fingerprint=fingerprint,
                        verified=not drop_in, told_by=facts.source, ignored=facts.ignored, reshaper=reshaper,
                        warmup_samples=samples, sequences=SequenceBook(
                            manifest.name, manifest.sequence, settings.max_queue_bytes,
                            frozenset(t.name for t in manifest.outputs), str(manifest.version),
                        ) if manifest.sequence is not None else None)
    if settings.warmup:
        try:
            model.warm_up()
        except Exception as e:
            raise LoadError("warmup", f"{folder}: warm-up failed: {type(e).__name__}: {e}") from e
    if session.wide is not None:
        measured = ", ".join(f"{rows}: {speedup:.2f}x" for rows, speedup in session.speedups.items())
        measured = f" (measured speedups {measured})" if measured else ""
        if session.wide_from_rows:
            logger.info("%s v%s: batches of %d+ rows run with %d ORT threads instead of %d%s", manifest.name,
                        manifest.version, session.wide_from_rows, session.wide_threads, session.threads, measured)
        else:
            logger.info("%s v%s: every batch runs with %d ORT thread(s): %d threads paid at no batch size%s",
                        manifest.name, manifest.version, session.threads, session.wide_threads, measured)
    return model


def _with_manifest(folder: Path, manifest: Manifest, settings: Settings, options: OrtOptions,
                   override: ModelFacts | None) -> tuple[Variant, OrtModel, dict[str, bytes]]:
    options = options.for_model((override.onnxruntime if override is not None else None) or manifest.onnxruntime)
    try:
        variant = choose_variant(manifest, options.providers, settings.variant)
    except ValueError as e:
        raise LoadError("variant", str(e)) from e
    try:  # only the variant served is read now; the others when (if) they are loaded
        model_bytes = read_verified(folder, manifest.variants[variant].file, manifest.variants[variant].sha256)
        extras = {file: read_verified(folder, file, digest.sha256) for file, digest in manifest.extra_files.items()}
    except ManifestError as e:
        raise LoadError("integrity", str(e)) from e
    file = manifest.variants[variant].file
    session = _session(folder, file, model_bytes, options)
    problems = disagreements(session.session, manifest, shapeless_tensors(session.session, model_bytes))
    if problems:  # else requests would fail in their batch, or warm-up would, or neither until a client tried
        raise LoadError("manifest", f"{folder}: the manifest does not match the graph of {file}: " + "; ".join(problems))
    return variant, session, extras


def _facts(folder: Path, override: ModelFacts | None) -> ModelFacts:
    """What a folder without a manifest says of its model, a load's configuration on top."""
    try:
        facts = read_facts(folder)
        return override.over(facts) if override is not None else facts
    except FactsError as e:
        raise LoadError("config", str(e)) from e


def _ensemble(folder: Path, settings: Settings, manifest: Manifest, facts: ModelFacts, fingerprint: str,
              find_model: FindModel | None) -> EnsembleModel:
    try:
        codec = make_codec(manifest, {}, input_limits(settings))
    except (ValueError, KeyError) as e:
        raise LoadError("manifest", f"{folder}: {type(e).__name__}: {e}") from e
    health = BatchHealth(f"{manifest.name} v{manifest.version}", settings.failure_threshold,
                         settings.failure_cooldown_s, settings.inference_timeout_s)
    return EnsembleModel(manifest, codec, health, batch_policy(settings, manifest), find_model, fingerprint,
                         facts.source, facts.ignored)


def _completed(folder: Path, settings: Settings, options: OrtOptions, facts: ModelFacts
               ) -> tuple[Manifest, Variant, OrtModel, dict[str, bytes]]:
    """A model file without a manifest: read once, loaded, its configuration completed."""
    missing = custom_ops.not_loaded(facts.op_libraries or [], folder.parent, options.custom_op_libraries)
    if missing:
        raise LoadError("config", f"{facts.source or folder}: {custom_ops.refusal(missing)}")
    file, data_folder = _graph_file(folder, facts.model_file)
    if (leaves := outside(folder, file, "the version's folder")) is not None:
        raise LoadError("config", f"{folder}: model file {file!r} {leaves}")
    try:
        model_bytes = (folder / file).read_bytes()
    except FileNotFoundError:
        raise LoadError("integrity", f"{folder}: no {MANIFEST_FILE} and no {file}: nothing to serve") from None
    except OSError as e:
        raise LoadError("integrity", f"{folder}: {file} cannot be read: {e}") from e
    session = _session(folder, file, model_bytes, options.for_model(facts.onnxruntime), data_folder)
    try:
        run_on = sample_inputs(facts.warmup[0], folder.parent) if facts.warmup else None
        read = facts.model_copy(update={"model_file": file})  # the graph's file, where it lies in a folder
        manifest, extras = complete(session.session, folder, read, model_bytes, measure=settings.warmup,
                                    run=session.run, run_on=run_on)
    except (GraphError, ValueError) as e:
        raise LoadError("graph", f"{folder}: {file} cannot be served: {e}") from e
    if facts.ignored:
        logger.warning("%s v%s: %s: fields ignored: %s", manifest.name, manifest.version, facts.source,
                       "; ".join(f"{k} ({why})" for k, why in facts.ignored.items()))
    return manifest, "fp32", session, extras


def _overridden(folder: Path, manifest: Manifest, override: ModelFacts) -> Manifest:
    """A load's configuration on a manifest's model: its batching, version policy, response
    cache and ONNX Runtime options; the tensors it names must be the manifest's."""
    for kind, declared, own in (("inputs", override.inputs, manifest.inputs), ("outputs", override.outputs, manifest.outputs)):
        if declared is not None and declared != own:
            raise LoadError("config", f"{folder}: the load's configuration declares {kind} "
                                      f"{[t.model_dump() for t in declared]}, the manifest {[t.model_dump() for t in own]}")
    update: dict[str, object] = {}
    if override.batching is not None:
        given = {k: v for k, v in override.batching.model_dump().items() if v is not None}
        if given.get("max_batch_size") == 0 and manifest.batches:
            raise LoadError("config", f"{folder}: max_batch_size 0: this model's manifest says it batches")
        update["batching"] = manifest.batching.model_copy(update=given | {"reason": "given by the load request"})
    if override.version_policy is not None:
        update["version_policy"] = override.version_policy
    if override.response_cache is not None:
        update["response_cache"] = override.response_cache
    if override.onnxruntime is not None:  # _with_manifest made the session with them
        update["onnxruntime"] = override.onnxruntime
    if override.sequence is not None:  # checked whole: the manifest's rules for a sequence model hold
        changed = manifest.model_copy(update=update | {"sequence": override.sequence})
        try:
            return Manifest.model_validate(changed.model_dump())
        except ValidationError as e:
            raise LoadError("config", f"{folder}: the load's sequence_batching: {describe(e)}") from e
    return manifest.model_copy(update=update)


def _graph_file(folder: Path, file: str) -> tuple[str, Path]:
    """The graph's file in the version's folder, and the folder its external data lie in:
    `file` itself beside them, or where `file` is a folder (Triton's layout for a graph with
    its external data: `1/model.onnx/model.onnx` and the data beside it), the model.onnx in it."""
    if (folder / file).is_dir():
        return f"{file}/{DROP_IN_FILE}", folder / file
    return file, folder


def _session(folder: Path, file: str, model_bytes: bytes, options: OrtOptions, data_folder: Path | None = None
             ) -> OrtModel:
    try:
        return OrtModel(model_bytes, options, data_folder or folder)
    except Exception as e:  # ORT raises its own exception types for a corrupt or unsupported graph
        raise LoadError("onnxruntime", f"{folder}: ONNX Runtime cannot load {file}: {type(e).__name__}: {e}"
                                       f"{custom_ops.hint(str(e), options.custom_op_libraries)}") from e


def input_limits(settings: Settings) -> InputLimits:
    return InputLimits(max_text_chars=settings.max_text_chars,
                       image=ImageLimits(max_pixels=settings.max_image_pixels, formats=tuple(settings.image_formats)))


def batch_policy(settings: Settings, manifest: Manifest) -> BatchPolicy:
    """The one place a model's batching is decided: the manifest's per-model values unless
    the settings override them, and the server-wide settings."""
    s, own = settings, manifest.batching
    delay_ms = s.max_queue_delay_ms if s.max_queue_delay_ms is not None else own.max_queue_delay_ms
    max_batch_size = s.max_batch_size or own.max_batch_size
    if not manifest.batches:  # no batch axis: each request runs alone, whatever the settings say
        max_batch_size, delay_ms = 1, 0.0
    # A model's own instances (Triton's instance_group) replace the server's inference threads
    # for it; one batch more than them in flight keeps the next ready behind the running ones.
    instances = manifest.onnxruntime.per_worker(s.worker_processes) if manifest.onnxruntime else None
    threads = instances or s.inference_threads
    inflight = max(s.max_inflight_batches, threads + 1) if instances else s.max_inflight_batches
    return BatchPolicy(
        max_batch_size=max_batch_size,
        max_large_batch_size=s.max_large_batch_size if max_batch_size > 1 else 1,  # 1: batching off, every row alone
        max_queue_delay_s=delay_ms / 1000,
        max_inflight_batches=inflight,
        idle_dispatch=s.idle_dispatch,
        inline_rows=s.inline_rows,
        inference_threads=threads,
        max_queue_size=s.max_queue_size,
        max_queue_bytes=s.max_queue_bytes,
        queue_bounds=_bounds(own.queue),
        priority_levels=own.priorities.levels if own.priorities else 0,
        default_priority_level=own.priorities.default_level if own.priorities else 0,
        level_queues=tuple(_bounds(own.priorities.queue_of(level, own.queue))
                           for level in range(1, own.priorities.levels + 1)) if own.priorities else (),
        retry_after_s=s.retry_after_s,
        inference_niceness=s.inference_niceness,
        grouping_window=GROUPING_WINDOW,
    )


def _bounds(policy: QueuePolicy | None) -> QueueBounds:
    if policy is None:
        return NO_BOUNDS
    return QueueBounds(max_requests=policy.max_requests, timeout_s=policy.timeout_ms / 1000,
                       delay=policy.timeout_action == "delay")


def _sequence_length(manifest: Manifest) -> Callable[[Mapping[str, np.ndarray]], int] | None:
    """For models with a variable-length input, a function giving a request's padded length
    (classifiers, and tensors models whose padding check passed: app/completion.py `_padding`)."""
    if manifest.task == TENSORS_TASK and not manifest.batching.pad:
        return None
    for spec in manifest.inputs:
        if len(spec.shape) >= 2 and spec.shape[1] == -1:
            name = spec.name
            return lambda inputs: int(inputs[name].shape[1])
    return None
