"""An ensemble (Triton's platform "ensemble"): a model with no graph of its own, whose
steps run other served models on its tensors, each step once what it takes exists
(app/ensemble_plan.py). Each step goes through its model as any request does (its batcher,
deadline, statistics, response cache), so a step's rows batch with that model's other
traffic. The step models are looked up when a request comes, as Triton's -1 (the newest
version) asks: a step model reloaded or replaced is used as it is now; one not served makes
the ensemble not ready, with why.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from app.batching import BatchPolicy
from app.batching.request import RequestTiming, request_timing
from app.codecs import Codec
from app.ensemble_plan import waves
from app.errors import ModelNotFound, ModelNotReady, ServingError
from app.manifest import TENSORS_TASK, BatchingDefaults, EnsembleStep, Manifest, TensorSpec
from app.model_facts import BatchingFacts, FactsError, ModelFacts, describe
from app.sequences import SequenceFlags
from app.served_model import ServedModel
from app.supervision import BatchHealth

FindModel = Callable[[str, str | None], ServedModel]
"""The repository's lookup: the served model of a name and version (None: the newest), or
the ServingError that says why there is none."""

_running: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ensembles_running", default=())
"""The ensembles a request is inside, outermost first: one that would run itself again is a cycle."""


_TAKEN = {"task", "description", "inputs", "outputs", "ensemble", "version_policy", "batching", "response_cache",
          "source", "ignored"}
"""What an ensemble's configuration may say (a config.json's other fields are a graph's)."""


def ensemble_manifest(folder: Path, facts: ModelFacts) -> Manifest:
    """The manifest of the ensemble a version folder's configuration describes: its declared
    tensors, its batch axis and its steps (FactsError where they cannot be served)."""
    source = facts.source or str(folder)
    given = sorted(name for name in facts.model_fields_set - _TAKEN if getattr(facts, name) is not None)
    batching = facts.batching or BatchingFacts()
    if given or batching.model_fields_set - {"max_batch_size", "max_queue_delay_ms"}:
        raise FactsError(f"{source}: an ensemble runs no graph of its own: "
                         f"{given or sorted(batching.model_fields_set)} do not apply to it")
    if not facts.inputs or not facts.outputs:
        raise FactsError(f"{source}: an ensemble declares its inputs and outputs")
    try:
        return Manifest(name=folder.parent.name, version=int(folder.name), task=TENSORS_TASK,
                        description=facts.description or "", inputs=facts.inputs, outputs=facts.outputs,
                        version_policy=facts.version_policy, ensemble=facts.ensemble,
                        response_cache=bool(facts.response_cache),
                        batching=BatchingDefaults(max_batch_size=batching.max_batch_size or 0, max_queue_delay_ms=0,
                                                  reason="an ensemble: its steps' models batch"))
    except ValidationError as e:
        raise FactsError(f"{source}: {describe(e)}") from e


class EnsembleModel(ServedModel):
    """Served as any model is (its lease, statistics, metadata, readiness), answered by its steps."""

    def __init__(self, manifest: Manifest, codec: Codec, health: BatchHealth, policy: BatchPolicy,
                 find: FindModel | None, fingerprint: str, told_by: str, ignored: dict[str, str]) -> None:
        super().__init__(manifest, "ensemble", None, None, codec, health, fingerprint=fingerprint,
                         verified=False, told_by=told_by, ignored=ignored)
        assert manifest.ensemble is not None
        self.steps: list[EnsembleStep] = manifest.ensemble
        self.waves = waves(self.steps, [t.name for t in manifest.inputs], [t.name for t in manifest.outputs])
        self._policy = policy
        self._find = find
        self._checking = False
        self._fit_of: list[weakref.ref[ServedModel]] = []  # the step models the tensors were last held against
        self._fit = ""  # and what that found

    @property
    def policy(self) -> BatchPolicy:
        return self._policy

    @property
    def device(self) -> str:
        return "CPU"  # it runs nothing but the event loop's work: its steps run where their models do

    @property
    def ready(self) -> bool:
        return not self.step_problem()

    def check(self) -> None:
        problem = self.step_problem()
        if problem:
            raise ModelNotReady(f"ensemble {self.name!r} is not ready: {problem}")

    def step_problem(self) -> str:
        """Why a request could not be answered now (a step model not served or not ready, or
        not taking the tensors its step gives it as their models declare them); empty when
        it could. The tensors are held against the models' declarations only when a step model
        is another object than last time (loaded, replaced): every request asks this."""
        if self._checking:  # ensembles whose steps run each other: not ready, not a recursion
            return "its steps run ensembles that run it in turn (a cycle)"
        self._checking = True
        try:
            models = []
            for index, step in enumerate(self.steps):
                try:
                    model = self._step_model(step)
                except ServingError as e:
                    return f"step {index}: {e.message}"
                if not model.ready:
                    return f"step {index}: model {step.model!r} is not ready"
                models.append(model)
        finally:
            self._checking = False
        if [held() for held in self._fit_of] != models:  # ServedModel compares by identity
            # weak references: a step model unloaded is freed, not kept alive by this
            self._fit_of = [weakref.ref(m) for m in models]
            self._fit = steps_problem(self.manifest, lambda index: models[index].manifest, self.waves)
        return self._fit

    def _step_model(self, step: EnsembleStep) -> ServedModel:
        if self._find is None:
            raise ModelNotReady("this ensemble was loaded without the repository's models")
        return self._find(step.model, None if step.version is None else str(step.version))

    async def infer(self, inputs: dict[str, np.ndarray], due: float, timeout_s: float,
                    client_gone: Callable[[], bool] | None = None, others_on_the_way: bool = False,
                    in_flight_beside: int = 0, priority: int = 0,
                    sequence: SequenceFlags | None = None) -> dict[str, np.ndarray]:
        """Each wave of steps in turn, the steps of a wave side by side, every step under the
        request's deadline and at its priority (as Triton's ensembles pass them on); the answer
        is the ensemble's outputs. An ensemble has no sequences (`sequence` is never given: it
        has no SequenceBook); a stateful step model refuses its steps' requests, saying why."""
        started = time.monotonic()
        running = _running.get()
        if self.name in running:
            raise ModelNotReady(f"ensemble {self.name!r} runs itself through its steps: "
                                + " -> ".join([*running, self.name]))
        key = None
        if self.cache is not None:  # Triton's top-level response cache: a hit runs no step
            key, kept = self._look_up(inputs, started)
            if kept is not None:
                return kept
        outer = request_timing.get()
        # The steps' batches fill this one (their waits and compute, added up): the ensemble's
        # statistics and the request's access-log line and trace are made of it.
        steps = RequestTiming(traced=outer is not None and outer.traced)
        tokens = _running.set((*running, self.name)), request_timing.set(steps)
        ok = False
        try:
            tensors = dict(inputs)
            for wave in self.waves:
                if len(wave) == 1:
                    await self._run_step(wave[0], tensors, due, timeout_s, client_gone, priority)
                else:
                    await asyncio.gather(*(self._run_step(i, tensors, due, timeout_s, client_gone, priority)
                                           for i in wave))
            outputs = {spec.name: tensors[spec.name] for spec in self.manifest.outputs}
            for spec in self.manifest.outputs:  # as declared: the answer is sized and encoded by these
                why = _refused(outputs[spec.name], spec, self.manifest.batches)
                if why:
                    raise ModelNotReady(f"ensemble {self.name!r}: its output {spec.name!r} was made as {why}")
            ok = True
            self.stats.record_steps(len(next(iter(inputs.values()))), steps.queue_s, steps.compute_s)
            if key is not None:
                self._keep(key, outputs)
            return outputs
        finally:
            _running.reset(tokens[0])
            request_timing.reset(tokens[1])
            self.stats.record_request(time.monotonic() - started, ok)
            if outer is not None:  # named as the model asked for, its steps' batches its own
                outer.model, outer.version, outer.queued, outer.answered = (self.name, self.version, started,
                                                                            time.monotonic())
                outer.batch_id, outer.batch_rows, outer.trigger = steps.batch_id, steps.batch_rows, steps.trigger
                outer.priority = outer.priority or steps.priority
                outer.batches += steps.batches
                outer.queue_s += steps.queue_s
                outer.compute_s += steps.compute_s
                outer.batch_spans.extend(steps.batch_spans)

    async def _run_step(self, index: int, tensors: dict[str, np.ndarray], due: float, timeout_s: float,
                        client_gone: Callable[[], bool] | None, priority: int) -> None:
        step = self.steps[index]
        where = f"ensemble {self.name!r}, step {index} (model {step.model!r})"
        try:
            try:
                model = self._step_model(step)
            except ModelNotFound as e:  # the ensemble is there: it cannot answer now
                raise ModelNotReady(e.message) from None
            if not model.ready:
                model.check()
            problem = _names_problem(step, model.manifest)
            if problem:
                raise ModelNotReady(problem)
            given = {inner: _as_batched(tensors[outer], self.manifest.batches, model.manifest.batches)
                     for inner, outer in step.inputs.items()}
            for spec in model.manifest.inputs:
                why = _refused(given[spec.name], spec, model.manifest.batches)
                if why:
                    raise ModelNotReady(f"tensor {step.inputs[spec.name]!r} as its input {spec.name!r}: {why}")
            async with model.lease() as model:
                outputs = await model.infer(given, due, timeout_s, client_gone, priority=priority)
        except ServingError as e:  # the step's own error, said to be the step's
            raise _said_of(e, where) from e
        for inner, outer in step.outputs.items():
            tensors[outer] = _as_batched(outputs[inner], model.manifest.batches, self.manifest.batches)

    def warm_up(self) -> None:
        """Nothing to warm: its steps' models warmed themselves up when they were loaded."""


def _said_of(error: ServingError, where: str) -> ServingError:
    """The same error (its kind, status and headers) with `where` before its message. A copy:
    a failed batch hands one error to every request it held, an ensemble's step or not."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.message = f"{where}: {error.message}"
    copy.args = (copy.message,)
    return copy


def steps_problem(manifest: Manifest, find: Callable[[int], Manifest], order: list[list[int]] | None = None) -> str:
    """Where an ensemble's steps and the models `find` gives for them by step index (their
    manifests, or the ServingError that says why there is none) disagree: why, with the step;
    else empty. `order`: the steps' waves, where the caller has them."""
    assert manifest.ensemble is not None
    steps = manifest.ensemble
    known = {t.name: t for t in manifest.inputs + manifest.outputs}
    for wave in order or waves(steps, [t.name for t in manifest.inputs], [t.name for t in manifest.outputs]):
        for index in wave:
            try:
                model = find(index)
            except ServingError as e:
                return f"step {index}: {e.message}"
            problem = _mismatch(steps[index], model, known)
            if problem:
                return f"step {index}: {problem}"
    return ""


def _mismatch(step: EnsembleStep, model: Manifest, known: dict[str, TensorSpec]) -> str:
    """Where the step's tensors and its model's declared ones disagree: why, else empty.
    `known`: the ensemble's tensors declared so far (its own, and what earlier steps' models
    declare they give), to which this step's outputs are added."""
    problem = _names_problem(step, model)
    if problem:
        return problem
    takes = {t.name: t for t in model.inputs}
    gives = {t.name: t for t in model.outputs}
    for inner, outer in step.inputs.items():
        if outer in known and not _fits(known[outer], takes[inner]):
            return (f"tensor {outer!r} is {_described(known[outer])}, model {model.name!r}'s input {inner!r} "
                    f"{_described(takes[inner])}")
    for inner, outer in step.outputs.items():
        if outer in known and not _fits(gives[inner], known[outer]):
            return (f"model {model.name!r}'s output {inner!r} is {_described(gives[inner])}, the ensemble's "
                    f"{outer!r} {_described(known[outer])}")
        known.setdefault(outer, gives[inner])
    return ""


def _names_problem(step: EnsembleStep, model: Manifest) -> str:
    """Where the step does not give its model every input, or names a tensor it has not: why."""
    takes = [t.name for t in model.inputs]
    gives = [t.name for t in model.outputs]
    if set(step.inputs) != set(takes) or not set(step.outputs) <= set(gives):
        return (f"model {model.name!r} takes inputs {takes} and gives outputs {gives}; the step gives it "
                f"{sorted(step.inputs)} and takes {sorted(step.outputs)}")
    return ""


def _fits(given: TensorSpec, taken: TensorSpec) -> bool:
    """Whether a tensor declared as `given` can be taken where `taken` is declared: the same
    datatype, and each axis the same where both know its length. Shapes as declared, a
    batching side's with its batch axis: the whole of what one side batches is the item of a
    side that does not batch (see _as_batched)."""
    if given.datatype != taken.datatype or len(given.shape) != len(taken.shape):
        return False
    return all(g == t or -1 in (g, t) for g, t in zip(given.shape, taken.shape, strict=True))


def _refused(array: np.ndarray, spec: TensorSpec, batches: bool) -> str:
    """Why a tensor made by a step is not what `spec` declares (a step model's input, or the
    ensemble's output), else empty: a request's tensor holds a first axis, of length 1 where
    its model does not batch."""
    shape = list(array.shape) if batches else list(array.shape[1:])
    if array.dtype != np.dtype(spec.numpy_dtype) or len(shape) != len(spec.shape) or any(
            d not in (-1, n) for d, n in zip(spec.shape, shape, strict=True)):
        return f"{array.dtype} {shape}, where it takes {_described(spec)}"
    return ""


def _as_batched(array: np.ndarray, batches: bool, wanted: bool) -> np.ndarray:
    """A tensor held as a request to a model that batches (`batches`) as a request to one that
    does (`wanted`) holds it. Every request here has a first axis, of length 1 where its model
    does not batch (app/protocol/v2.py adds it): what a batching side holds as its whole
    tensor is, to a side that does not batch, the one item of such a request."""
    if batches == wanted:
        return array
    return array[np.newaxis] if wanted is False else array[0]


def _described(spec: TensorSpec) -> str:
    return f"{spec.datatype} {spec.shape}"
