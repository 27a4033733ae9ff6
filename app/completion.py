"""A model without a manifest, completed into one: the graph gives its tensors, the facts
(app/model_facts.py: config.json, Triton's config.pbtxt, a load's override) give what they
say, and what neither says is decided by running the model: whether its first axis is a
batch axis, its batching (app/batch_sizing.py), whether its scores are probabilities.

The manifest made here is the one the rest of the server reads, exactly as if it had been
written by hand, and `python -m app import` writes it to disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from app.batch_sizing import choose, measure_costs
from app.errors import validation_errors
from app.graph import (
    GraphError,
    InputMaker,
    check_batches,
    check_padding,
    disagreements,
    first_axis_dynamic,
    generated_inputs,
    graph_tensors,
    inputs_it_takes,
    looks_like_probabilities,
    shapeless_tensors,
    with_ranks_run,
)
from app.manifest import (
    TENSORS_TASK,
    BatchingDefaults,
    FileDigest,
    Manifest,
    TextPreprocessing,
    VariantFile,
    outside,
    sha256_of_bytes,
)
from app.model_facts import ModelFacts

UNMEASURED_BATCHING = BatchingDefaults(max_batch_size=16, max_queue_delay_ms=2.0,
                                       reason="not measured (warm-up is off): the default of 16 rows, 2 ms")
"""A batching model's batching where it is not measured and nothing else says."""
DECLARE_SHAPES = ("shapes in the model's config.json (`inputs`, as a manifest lists them) or its config.pbtxt "
                  "(`input` dims, with max_batch_size where the first axis is a batch axis)")
UNPADDED_BATCHING_REASON = (
    "a dynamic axis besides the first: a request batches only with requests of its shapes, since "
    "zero-padding other lengths to the longest would change what a model that does not mask its padding answers "
    "(a model that does: pad: true in its config.json's batching)")
PADDED_BATCHING_REASON = (
    "a dynamic axis besides the first: requests of other lengths batch together, zero-padded to the longest "
    "(pad: true), as the model answered rows so padded what it answers each alone (it masks its padding)")


def complete(session: ort.InferenceSession, folder: Path, facts: ModelFacts, model_bytes: bytes, *,
             measure: bool, run: Callable[[dict[str, np.ndarray]], object] | None = None,
             run_on: InputMaker | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest of the model in `folder` (`<name>/<version>/`), and the extra files it
    reads (a text model's vocabulary), already read. GraphError (ValueError) says why it
    cannot be served. `run` times batches where batching is measured (the serving session);
    `run_on` makes what the model is run on to check and time it (a configuration's warm-up
    sample, where it gives one; else generated inputs)."""
    inputs, outputs = graph_tensors(session)
    shapeless = shapeless_tensors(session, model_bytes)
    task = facts.task or TENSORS_TASK
    # A configuration that lists outputs serves those (Triton's does, too); its tensors must
    # agree with the graph's, which is checked below, once the batch axis is settled.
    # A sequence model's controls and states are the server's to fill: clients send the rest,
    # and get the outputs but the states' (Triton's: unless the configuration lists them).
    filled = facts.sequence.names() if facts.sequence is not None else set()
    kept = {s.output for s in facts.sequence.states} if facts.sequence is not None else set()
    declared_in = facts.inputs or [spec for spec in inputs if spec.name not in filled]
    given = facts.batching.max_batch_size if facts.batching is not None else None
    unknown = sorted(spec.name for spec in declared_in if spec.name in shapeless and facts.inputs is None)
    if unknown:  # its rank could be anything: a request's shape could not be checked before it runs
        raise GraphError(f"inputs {unknown} declare no shape in the graph, not even a rank: declare the inputs' "
                         f"{DECLARE_SHAPES}")
    run_with = declared_in + (facts.sequence.graph_inputs() if facts.sequence is not None else [])
    declared_out = facts.outputs or with_ranks_run(session, run_with, bool(given) and facts.inputs is not None,
                                                   [spec for spec in outputs if spec.name not in kept], shapeless)
    if given is not None and facts.inputs is not None:
        why_not = None  # shapes declared with or without a batch axis, as max_batch_size says
    else:
        why_not = first_axis_dynamic(declared_in + declared_out)
    batches = given != 0 and why_not is None
    extras = _extra_files(folder, facts)
    vocabulary = {file: FileDigest(sha256=sha256_of_bytes(data), size_bytes=max(len(data), 1))
                  for file, data in extras.items()}

    def manifest(batching: BatchingDefaults) -> Manifest:
        try:
            return Manifest(
                name=folder.parent.name, version=int(folder.name), task=task,
                description=facts.description or _description(folder, facts),
                labels=facts.labels or [], scores=facts.scores or "logits", inputs=declared_in, outputs=declared_out,
                preprocessing=facts.preprocessing, extra_files=vocabulary, version_policy=facts.version_policy,
                variants={"fp32": VariantFile(file=facts.model_file, sha256=sha256_of_bytes(model_bytes),
                                              size_bytes=len(model_bytes))},
                preferred_variant={"cpu": "fp32", "cuda": "fp32"}, batching=batching,
                response_cache=bool(facts.response_cache), onnxruntime=facts.onnxruntime, sequence=facts.sequence)
        except ValidationError as e:
            raise GraphError(f"it does not make a {task} model: {validation_errors(e.errors(), whole='', limit=3)}") from e

    if not batches:
        reason = (f"max_batch_size 0 in {facts.source}" if given == 0 else
                  f"it does not batch: {why_not}" if why_not else "its declared shapes have no batch axis")
        candidate = manifest(BatchingDefaults(max_batch_size=0, max_queue_delay_ms=0, reason=reason))
    else:
        candidate = manifest(BatchingDefaults(max_batch_size=1, max_queue_delay_ms=0))
    # Checked once: the candidates below differ in their batching only, never in their tensors.
    problems = disagreements(session, candidate, shapeless)
    if problems:
        raise GraphError(f"{facts.source or 'its configuration'} does not match the graph: " + "; ".join(problems))
    run_on = run_on or inputs_it_takes(session, candidate)
    if batches:
        broken = check_batches(session, candidate, run_on)
        if broken is not None:
            if given:  # told it batches: a configuration that is wrong is refused, not second-guessed
                raise GraphError(f"{facts.source} says it batches, but {broken}")
            candidate = manifest(BatchingDefaults(
                max_batch_size=0, max_queue_delay_ms=0, reason=f"it does not batch: {broken}, so the first "
                "axis is not a batch axis"))
        else:
            candidate = manifest(_batching(facts, candidate, measure, run or (lambda x: session.run(None, x)),
                                           run_on))
            if has_sequence_axes(candidate) and candidate.batching.max_batch_size > 1:
                candidate = manifest(_padding(session, candidate, facts, run_on))
    if candidate.labels and facts.scores is None and looks_like_probabilities(session, candidate, run_on):
        candidate = candidate.model_copy(update={"scores": "probabilities"})
    return candidate, extras


def _batching(facts: ModelFacts, manifest: Manifest, measure: bool,
              run: Callable[[dict[str, np.ndarray]], object], run_on: InputMaker | None) -> BatchingDefaults:
    chosen = _batch_sizes(facts, manifest, measure, run, run_on)
    if facts.batching is not None:  # its queue's bounds and priorities, as given
        given = {name: value for name in ("queue", "priorities")
                 if (value := getattr(facts.batching, name)) is not None}
        chosen = chosen.model_copy(update=given)
    return chosen


def _batch_sizes(facts: ModelFacts, manifest: Manifest, measure: bool,
                 run: Callable[[dict[str, np.ndarray]], object], run_on: InputMaker | None) -> BatchingDefaults:
    given = facts.batching
    if given is not None and given.max_batch_size is not None and given.max_queue_delay_ms is not None:
        return BatchingDefaults(max_batch_size=given.max_batch_size, max_queue_delay_ms=given.max_queue_delay_ms,
                                reason=f"given by {facts.source}")
    if measure:
        chosen = choose(measure_costs(run, lambda rows: (run_on or generated_inputs)(manifest, rows)))
    else:
        chosen = UNMEASURED_BATCHING
    if given is not None:  # one of the two given: it wins, the other is measured
        sizes = {k: v for k, v in given.model_dump(include={"max_batch_size", "max_queue_delay_ms"}).items()
                 if v is not None}
        chosen = chosen.model_copy(update=sizes | {"reason": f"{chosen.reason}; {sorted(sizes)} given by "
                                                             f"{facts.source}"})
    return chosen


def _padding(session: ort.InferenceSession, manifest: Manifest, facts: ModelFacts, run_on: InputMaker
             ) -> BatchingDefaults:
    """A model with a dynamic axis besides the first: whether requests of other lengths batch
    together, zero-padded, which its configuration asks for (`pad: true`) and which is then
    checked (the padded rows must answer what each answers alone), or only with requests of
    their own shapes. Not the default: padding pays for a model whose batches cost little per
    row and loses for one whose requests are large enough on their own (measured, README)."""
    batching = manifest.batching
    if facts.batching is None or not facts.batching.pad:
        return batching.model_copy(update={"reason": f"{batching.reason}; {UNPADDED_BATCHING_REASON}"})
    broken = check_padding(session, manifest, run_on)
    if broken is not None:
        raise GraphError(f"{facts.source} says pad: true, but {broken}")
    return batching.model_copy(update={"pad": True, "reason": f"{batching.reason}; {PADDED_BATCHING_REASON}"})


def has_sequence_axes(manifest: Manifest) -> bool:
    """A batching tensors model with a dynamic axis besides the first (a sequence's length, say),
    in a client's input or in a state the server keeps (a stateful model's history that grows)."""
    return manifest.task == TENSORS_TASK and manifest.batches and any(
        -1 in t.shape[1:] for t in manifest.graph_inputs())


def pads_unmasked(manifest: Manifest) -> bool:
    """A tensors model with a dynamic axis besides the first that is not padded (its
    configuration did not ask, `_padding`): its requests are batched only with requests of the
    same shapes (a text classifier is padded: it masks its padding with its lengths input)."""
    return has_sequence_axes(manifest) and not manifest.batching.pad


def _extra_files(folder: Path, facts: ModelFacts) -> dict[str, bytes]:
    if not isinstance(facts.preprocessing, TextPreprocessing):
        return {}
    file = facts.preprocessing.vocabulary_file
    path = folder / file
    if (leaves := outside(folder, file, "the version's folder")) is not None:
        raise GraphError(f"the vocabulary file {file!r} {leaves}")
    try:
        return {file: path.read_bytes()}
    except OSError as e:
        raise GraphError(f"the vocabulary file {file!r} cannot be read: {e}") from e


def _description(folder: Path, facts: ModelFacts) -> str:
    told = f" and {facts.source}" if facts.source else ""
    return f"{folder.parent.name}: {facts.model_file}, its configuration completed from the graph{told}"
