"""What a model folder says about a model besides its graph, where it has no manifest: a
`config.json` of a few optional fields, or Triton's `config.pbtxt`, or a configuration
given with a load request (Triton's `parameters.config`). The server completes the rest
from the graph (app/completion.py).

Triton's text format is parsed with protobuf against Triton's own schema (the
`model_config.proto` that tritonclient ships); the fields this server does not use are
named, never silently dropped: those that change what a model computes or how its
requests are grouped are refused, the rest are listed as ignored (in the log and in the
model's /config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tritonclient.grpc import model_config_pb2

from app.errors import validation_errors
from app.graph import DROP_IN_FILE
from app.manifest import (
    MAX_INSTANCES,
    TRITON_EXECUTION_MODES,
    TRITON_GRAPH_LEVELS,
    TRITON_ORT_PARAMETERS,
    EnsembleStep,
    ModelRuntimeOptions,
    Preprocessing,
    Priorities,
    QueuePolicy,
    SequenceControl,
    Sequences,
    SequenceState,
    TensorSpec,
    VersionPolicy,
    from_triton_type,
    outside,
)

CONFIG_JSON = "config.json"
CONFIG_PBTXT = "config.pbtxt"
PLATFORMS = {"onnxruntime_onnx"}
BACKENDS = {"onnxruntime"}
ENSEMBLE = "ensemble"
"""Triton's platform of a model that runs other models in steps (its ensemble_scheduling)."""

# Triton fields by what this server does with them. Anything not named here is refused:
# a field added to Triton's schema later is not served as if it were absent.
_HONOURED = {"name", "platform", "backend", "max_batch_size", "input", "output", "dynamic_batching",
             "version_policy", "default_model_filename", "response_cache", "model_warmup", "model_operations",
             "optimization", "parameters", "model_transaction_policy", "instance_group", "sequence_batching"}
_IGNORED = {"model_metrics": "metrics are the server's", "metric_tags": "metrics are the server's",
            "cc_model_filenames": "per-GPU files", "model_repository_agents": "no repository agents",
            "runtime": "the ONNX Runtime backend is built in"}
_HONOURED_BATCHING = {"max_queue_delay_microseconds", "preferred_batch_size", "default_queue_policy",
                      "priority_levels", "default_priority_level", "priority_queue_policy"}
_IGNORED_BATCHING = {"preserve_ordering": "answers always go to their own requests"}
# An ensemble runs no graph of its own: of the rest, these are named as ignored (what it
# would set is its steps' models' own), any other field is refused.
_ENSEMBLE_FIELDS = {"name", "platform", "max_batch_size", "input", "output", "ensemble_scheduling", "version_policy",
                    "response_cache"}
_IGNORED_BY_ENSEMBLES = {"model_warmup", "optimization", "parameters", "default_model_filename",
                         "model_transaction_policy", "instance_group", *_IGNORED}
_TIMEOUT_DELAY = 1  # Triton's ModelQueuePolicy.TimeoutAction DELAY (REJECT is 0)
_TENSOR_FIELDS = {"name", "data_type", "dims", "reshape", "label_filename", "format", "optional"}

# Triton's ONNX Runtime backend's optimization fields and model parameters that are not
# session options this server takes from a model (its README, "Other Optimization Options").
_IGNORED_OPTIMIZATION = {"execution_accelerators": "execution providers are the server's: --providers",
                         "priority": "model instances have no CPU priority of their own (inference_niceness "
                                     "is the server's)",
                         "cuda": "no CUDA graphs",
                         "input_pinned_memory": "host buffers are the server's",
                         "output_pinned_memory": "host buffers are the server's"}
# Triton's instance_group fields besides the count, its kind and passive: the device is the
# server's (--providers), whatever a group's kind or gpus say; gpus only multiply the count.
_IGNORED_INSTANCE_FIELDS = {"rate_limiter": "no rate limiter: a model's batches are bounded by its instances",
                            "secondary_devices": "no secondary devices", "profile": "no TensorRT profiles",
                            "host_policy": "no host policies"}
_CUDA_PARAMETERS = {"cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy", "do_copy_in_default_stream",
                    "session.use_device_allocator_for_initializers"}
_BOOLEANS = {"1": True, "true": True, "0": False, "false": False}


class FactsError(ValueError):
    """A configuration that cannot be served, with the file (or request) and why."""


class _Facts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WarmupInput(_Facts):
    """One input of a warm-up sample: its values all zero, random, or read from a file of the
    model's `warmup` folder (raw, row-major; BYTES as 4-byte little-endian lengths, each
    followed by its bytes), as Triton's ModelWarmup.Input."""

    datatype: str
    dims: list[int]
    data: Literal["zero", "random", "file"]
    file: str | None = None


class WarmupSample(_Facts):
    """Triton's ModelWarmup: a request the model is warmed up with, instead of generated inputs."""

    name: str = ""
    batch_size: int = Field(default=1, ge=1)
    inputs: dict[str, WarmupInput]
    count: int = Field(default=1, ge=1)


class BatchingFacts(_Facts):
    max_batch_size: int | None = Field(default=None, ge=0)
    """0: the model does not batch; 1: each request alone; None: measured at load."""
    max_queue_delay_ms: float | None = Field(default=None, ge=0)
    queue: QueuePolicy | None = None
    """The model's own queue bounds (Triton's default_queue_policy): `max_requests`, `timeout_ms`."""
    priorities: Priorities | None = None
    """Priority levels (Triton's priority_levels, default_priority_level, priority_queue_policy):
    `levels`, `default_level`, `queues` (a level's own bounds, by level)."""
    pad: bool | None = None
    """A model with a dynamic axis besides the first: true batches requests of other lengths
    together, zero-padded to the longest, once running the model shows that padding does not
    change its answers (it masks its padding); else (the default) a request batches only with
    requests of its shapes."""


class ModelFacts(_Facts):
    """Everything optional: what is left out is completed from the graph or measured.
    This is the schema of `config.json`."""

    task: Literal["image-classification", "text-classification", "tensors"] | None = None
    description: str | None = None
    labels: list[str] | None = None
    """The classes of the first output's last axis."""
    labels_file: str | None = None
    """Or a file beside this one with one label per line (Triton's label_filename)."""
    scores: Literal["logits", "probabilities"] | None = None
    preprocessing: Preprocessing | None = None
    """A classification task's (its vocabulary file, for text, beside the model)."""
    version_policy: VersionPolicy | None = None
    batching: BatchingFacts | None = None
    response_cache: bool | None = None
    """Keep answers for inputs seen before (Triton's response_cache.enable)."""
    warmup: list[WarmupSample] | None = None
    """Requests to warm the model up with (Triton's model_warmup); None: generated inputs."""
    inputs: list[TensorSpec] | None = None
    """Declared tensors (config.pbtxt's): checked against the graph, which must agree."""
    outputs: list[TensorSpec] | None = None
    model_file: str = DROP_IN_FILE
    onnxruntime: ModelRuntimeOptions | None = None
    """The model's own ONNX Runtime options (Triton's optimization.graph.level and ONNX Runtime
    parameters); each unset is the server's."""
    sequence: Sequences | None = None
    """A stateful model's sequences (Triton's sequence_batching): the controls and states the
    server fills for each request."""
    ensemble: list[EnsembleStep] | None = None
    """An ensemble's steps (Triton's ensemble_scheduling): it has no graph, its inputs and
    outputs are declared, and each step runs a served model on its tensors."""
    op_libraries: list[str] | None = None
    """Custom operator libraries the graph needs (Triton's model_operations.op_library_filename;
    a relative path from the model's folder): each must be one the server loads
    (custom_op_libraries), which registers them with every session."""
    source: str = Field(default="", exclude=True)
    """Where these facts came from, for messages and /config."""
    ignored: dict[str, str] = Field(default_factory=dict, exclude=True)
    """Fields of a Triton configuration this server does not use, with why."""

    def over(self, base: ModelFacts) -> ModelFacts:
        """These facts on top of `base`: each field set here wins; batching field by field (a
        load's configuration gives its sizes, and a config.json's `pad` stays)."""
        given = {name: getattr(self, name) for name in self.model_fields_set - {"source", "ignored"}}
        if self.batching is not None and base.batching is not None:
            given["batching"] = base.batching.model_copy(
                update={name: getattr(self.batching, name) for name in self.batching.model_fields_set})
        merged = base.model_copy(update=given)
        sources = " + ".join(s for s in (base.source, self.source) if s)
        return merged.model_copy(update={"source": sources, "ignored": base.ignored | self.ignored})


NO_FACTS = ModelFacts()


def read_facts(version_folder: Path) -> ModelFacts:
    """A version's facts: Triton's config.pbtxt in the model's folder, then config.json in
    the model's folder and in the version's, each on top of the one before."""
    facts = NO_FACTS
    for path in facts_files(version_folder):
        if path.name == CONFIG_PBTXT:
            facts = from_triton_text(_read(path), path.parent.name, str(path))
        else:
            facts = facts_from_json(path).over(facts)
    return facts


def facts_files(version_folder: Path) -> list[Path]:
    """The files `read_facts` reads for this version, in the order it reads them, where they exist."""
    candidates = [version_folder.parent / CONFIG_PBTXT, version_folder.parent / CONFIG_JSON,
                  version_folder / CONFIG_JSON]
    return [p for p in candidates if p.is_file()]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FactsError(f"{path}: cannot be read: {e}") from e


def facts_from_json(path: Path) -> ModelFacts:
    """A config.json's facts, its labels file (a path beside it) read."""
    try:
        raw = json.loads(_read(path))
        facts = ModelFacts.model_validate(raw)
    except json.JSONDecodeError as e:
        raise FactsError(f"{path}: not valid JSON: {e}") from e
    except ValidationError as e:
        raise FactsError(f"{path}: {describe(e)}") from e
    if facts.labels_file is not None:
        facts = facts.model_copy(update={"labels": read_labels(path.parent, facts.labels_file, path),
                                         "labels_file": None})
    return facts.model_copy(update={"source": str(path)})


def read_labels(folder: Path, file: str, named_in: Path | str) -> list[str]:
    """One label per line of `folder/file`, which must lie in `folder`."""
    path = folder / file
    if (leaves := outside(folder, file, "the model's folder")) is not None:
        raise FactsError(f"{named_in}: labels file {file!r} {leaves}")
    labels = [line.strip() for line in _read(path).splitlines() if line.strip()]
    if not labels:
        raise FactsError(f"{path}: no labels in it (one per line)")
    return labels


def describe(error: ValidationError) -> str:
    return validation_errors(error.errors())


def from_triton_text(text: str, folder_name: str, source: str) -> ModelFacts:
    """Triton's config.pbtxt, as facts: FactsError for what cannot be served."""
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise FactsError(f"{source}: not a Triton model configuration: {e}") from e
    return from_triton(config, folder_name, source, Path(source).parent)


def from_triton_json(text: str, folder_name: str, source: str) -> ModelFacts:
    """A configuration in Triton's JSON form (a load request's `parameters.config`); here
    every field must be one that is used: an override must not be half applied."""
    config = model_config_pb2.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as e:
        raise FactsError(f"{source}: not a Triton model configuration: {e}") from e
    facts = from_triton(config, folder_name, source, None)
    if facts.ignored:
        raise FactsError(f"{source}: fields {sorted(facts.ignored)} are not supported in a load's configuration "
                         "(they would be ignored); supported: " + ", ".join(sorted(_HONOURED - {"name"})))
    return facts


def _set_fields(message: Message) -> set[str]:
    return {field.name for field, _ in message.ListFields()}


def from_triton(config: Any, folder_name: str, source: str, folder: Path | None) -> ModelFacts:
    fields = _set_fields(config)
    if config.name and config.name != folder_name:
        raise FactsError(f"{source}: names model {config.name!r} but lies in folder {folder_name!r}")
    if config.max_batch_size < 0:  # read as "no dynamic batching", it would serve a row at a time silently
        raise FactsError(f"{source}: max_batch_size {config.max_batch_size}: it must be 0 (no batch axis) or more")
    if config.platform == ENSEMBLE:
        return _ensemble(config, fields, source)
    refused = sorted(fields - _HONOURED - set(_IGNORED))
    if refused:
        raise FactsError(f"{source}: fields {refused} are not supported (this server serves ONNX models with "
                         "dynamic or sequence batching, and ensembles of them: no batch inputs or outputs)")
    if config.platform and config.platform not in PLATFORMS or config.backend and config.backend not in BACKENDS:
        raise FactsError(f"{source}: platform {config.platform!r} / backend {config.backend!r}: only ONNX models "
                         "are served (platform onnxruntime_onnx, backend onnxruntime)")
    if config.model_transaction_policy.decoupled:  # false is what this server does: one answer per request
        raise FactsError(f"{source}: model_transaction_policy.decoupled: a decoupled model (any number of "
                         "answers per request) is not served; every request here gets one answer")
    ignored = {name: why for name, why in _IGNORED.items() if name in fields}
    batches = config.max_batch_size > 0
    inputs = [_tensor(t, batches, source, ignored) for t in config.input] or None
    outputs = [_tensor(t, batches, source, ignored) for t in config.output] or None
    labels = None
    for t in config.output:
        if t.label_filename:
            if t.name != config.output[0].name:
                ignored[f"output.{t.name}.label_filename"] = "labels are read for the first output only"
            elif folder is None:
                raise FactsError(f"{source}: label_filename needs the model's folder; list the labels instead")
            else:
                labels = read_labels(folder, t.label_filename, source)
    batching = _batching(config, fields, source, ignored)
    sequence = None
    if "sequence_batching" in fields:
        sequence, batching = _sequence(config, source, ignored)
    policy = _version_policy(config) if "version_policy" in fields else None
    cache = config.response_cache.enable if "response_cache" in fields else None
    warmup = [_warmup_sample(sample, source) for sample in config.model_warmup] or None
    libraries = list(config.model_operations.op_library_filename) or None
    given: dict[str, Any] = {"labels": labels, "version_policy": policy, "batching": batching, "inputs": inputs,
             "outputs": outputs, "model_file": config.default_model_filename or None, "response_cache": cache,
             "warmup": warmup, "op_libraries": libraries, "onnxruntime": _runtime_options(config, source, ignored),
             "sequence": sequence}
    # Only what the configuration says is set: facts on top of others replace only that.
    return ModelFacts(**{k: v for k, v in given.items() if v is not None}, source=source, ignored=ignored)


def _ensemble(config: Any, fields: set[str], source: str) -> ModelFacts:
    """Triton's ensemble: its declared tensors, batch axis and steps; Triton's -1 (the newest
    version), or a step's model_version left out, is None. What the steps connect is checked
    with the manifest (app/ensemble_plan.py)."""
    refused = sorted(fields - _ENSEMBLE_FIELDS - _IGNORED_BY_ENSEMBLES)
    if refused:
        raise FactsError(f"{source}: fields {refused} are not supported for an ensemble")
    if config.backend:
        raise FactsError(f"{source}: backend {config.backend!r}: an ensemble has no backend")
    if not config.ensemble_scheduling.step or not config.input or not config.output:
        raise FactsError(f"{source}: an ensemble declares its inputs, its outputs and its ensemble_scheduling steps")
    ignored = {name: "an ensemble runs no graph of its own: its steps' models have their own" for name in
               sorted(fields & _IGNORED_BY_ENSEMBLES)}
    if config.ensemble_scheduling.max_inflight_requests:
        ignored["ensemble_scheduling.max_inflight_requests"] = "requests are bounded by the steps' models' queues"
    steps = []
    for index, step in enumerate(config.ensemble_scheduling.step):
        if step.model_namespace:
            raise FactsError(f"{source}: step {index}: model_namespace: models have no namespaces here")
        if step.model_version < -1:
            raise FactsError(f"{source}: step {index}: model_version {step.model_version}: -1 (the newest) or a "
                             "version number")
        try:  # unset (0 to proto3, and no version here) is -1's newest
            steps.append(EnsembleStep(model=step.model_name, version=step.model_version if step.model_version > 0
                                      else None, inputs=dict(step.input_map),
                                      outputs=dict(step.output_map)))
        except ValidationError as e:
            raise FactsError(f"{source}: step {index}: {describe(e)}") from e
    batches = config.max_batch_size > 0
    inputs = [_tensor(t, batches, source, ignored) for t in config.input]
    outputs = [_tensor(t, batches, source, ignored) for t in config.output]
    reshaped = [t.name for t in inputs + outputs if t.reshape is not None]
    if reshaped:  # nothing here would reshape them: its steps take them as clients send them
        raise FactsError(f"{source}: tensors {reshaped}: an ensemble's tensors are not reshaped (give the reshape "
                         "in the configuration of the step model that takes or gives them)")
    given: dict[str, Any] = {"task": "tensors", "inputs": inputs, "outputs": outputs, "ensemble": steps,
                             "batching": BatchingFacts(max_batch_size=config.max_batch_size, max_queue_delay_ms=0)}
    if "version_policy" in fields:
        given["version_policy"] = _version_policy(config)
    if "response_cache" in fields:
        given["response_cache"] = config.response_cache.enable
    return ModelFacts(**given, source=source, ignored=ignored)


def _tensor(tensor: Any, batches: bool, source: str, ignored: dict[str, str]) -> TensorSpec:
    refused = sorted(_set_fields(tensor) - _TENSOR_FIELDS)
    if refused:
        raise FactsError(f"{source}: tensor {tensor.name!r}: fields {refused} are not supported")
    datatype = from_triton_type(model_config_pb2.DataType.Name(tensor.data_type))
    dims = list(tensor.dims)
    reshape: list[int] | None = None
    if tensor.HasField("reshape"):
        reshape = list(tensor.reshape.shape)
        if dims == [1] and reshape == []:  # one value per item, or a scalar: either shape is taken
            dims, reshape = [], None
        elif reshape == dims:
            reshape = None
    for name in ("format", "optional"):
        if name in _set_fields(tensor):
            ignored[f"{tensor.name}.{name}"] = "every input is required; no layout conversion"
    try:
        spec = TensorSpec(name=tensor.name, datatype=datatype, shape=[-1, *dims] if batches else dims, reshape=reshape)
    except ValidationError as e:
        raise FactsError(f"{source}: tensor {tensor.name!r}: {describe(e)}") from e
    problem = spec.reshape_problem(batches)
    if problem:
        raise FactsError(f"{source}: {problem}")
    return spec


def _runtime_options(config: Any, source: str, ignored: dict[str, str]) -> ModelRuntimeOptions | None:
    """The ONNX Runtime options Triton's ONNX Runtime backend reads from a configuration, as
    it reads them (a thread count of 0 is the server's choice); its other parameters and
    optimization fields are named as ignored."""
    given: dict[str, Any] = {}
    optimization = config.optimization
    for name in sorted(_set_fields(optimization) - {"graph"}):
        ignored[f"optimization.{name}"] = _IGNORED_OPTIMIZATION.get(name, "not used")
    if optimization.HasField("graph"):
        level = optimization.graph.level
        if level not in TRITON_GRAPH_LEVELS:
            raise FactsError(f"{source}: optimization.graph.level {level}: it must be -1 (basic), 0 (all), "
                             "1 (extended) or 2 (disabled)")
        given["graph_optimization"] = TRITON_GRAPH_LEVELS[level]
    for key in sorted(config.parameters):
        if key not in TRITON_ORT_PARAMETERS:
            ignored[f"parameters.{key}"] = ("CUDA options are the server's" if key in _CUDA_PARAMETERS
                                            else "not an ONNX Runtime option this server reads")
            continue
        text = config.parameters[key].string_value.strip()
        value = _parameter(key, text, source)
        if value is not None:
            given[TRITON_ORT_PARAMETERS[key]] = value
    if config.instance_group:
        given["instances"] = _instances(config.instance_group, source, ignored)
    try:
        return ModelRuntimeOptions(**given) if given else None
    except ValidationError as e:
        raise FactsError(f"{source}: {describe(e)}") from e


def _instances(groups: Any, source: str, ignored: dict[str, str]) -> int:
    """How many instances Triton would make of the groups that take requests: a group's count
    (unset: 1), for each GPU it lists; passive groups take none."""
    total = 0
    for index, group in enumerate(groups):
        if group.count < 0:
            raise FactsError(f"{source}: instance_group {index}: count {group.count}: it must be 1 or more")
        for name in sorted(_set_fields(group) & set(_IGNORED_INSTANCE_FIELDS)):
            ignored[f"instance_group.{name}"] = _IGNORED_INSTANCE_FIELDS[name]
        if not group.passive:
            total += max(1, group.count) * max(1, len(group.gpus))
    if not total:
        raise FactsError(f"{source}: instance_group: every group is passive, so no instance would take requests")
    if total > MAX_INSTANCES:
        raise FactsError(f"{source}: instance_group: {total} instances; at most {MAX_INSTANCES} (each is a thread "
                         "in every worker)")
    return total


def _parameter(key: str, text: str, source: str) -> Any:
    """One ONNX Runtime parameter's string_value as its option's value (None: the server's)."""
    if key in ("enable_mem_arena", "enable_mem_pattern"):
        if text.lower() not in _BOOLEANS:
            raise FactsError(f"{source}: parameters {key!r} is {text!r}: it must be 1, 0, true or false")
        return _BOOLEANS[text.lower()]
    try:
        number = int(text)
    except ValueError:
        number = -1
    if key == "execution_mode":
        if number not in (0, 1):
            raise FactsError(f"{source}: parameters 'execution_mode' is {text!r}: it must be 0 (sequential) "
                             "or 1 (parallel)")
        return TRITON_EXECUTION_MODES[number]
    if number < 0:
        raise FactsError(f"{source}: parameters {key!r} is {text!r}: it must be a whole number of threads, "
                         "0 for the server's choice")
    return number or None


_WARMUP_DATA: dict[str, Literal["zero", "random", "file"]] = {
    "zero_data": "zero", "random_data": "random", "input_data_file": "file"}


def _warmup_sample(sample: Any, source: str) -> WarmupSample:
    inputs = {}
    for name, given in sample.inputs.items():
        kind = given.WhichOneof("input_data_type")
        if kind is None:
            raise FactsError(f"{source}: model_warmup {sample.name!r}, input {name!r}: says neither zero_data, "
                             "random_data nor input_data_file")
        data = _WARMUP_DATA[kind]
        inputs[name] = WarmupInput(datatype=from_triton_type(model_config_pb2.DataType.Name(given.data_type)),
                                   dims=list(given.dims), data=data,
                                   file=given.input_data_file if data == "file" else None)
    try:
        return WarmupSample(name=sample.name, batch_size=max(1, sample.batch_size), inputs=inputs,
                            count=max(1, sample.count))
    except ValidationError as e:
        raise FactsError(f"{source}: model_warmup {sample.name!r}: {describe(e)}") from e


def _batching(config: Any, fields: set[str], source: str, ignored: dict[str, str]) -> BatchingFacts | None:
    """Triton's batching as ours: max_batch_size 0 does not batch; without dynamic_batching
    each request runs as it comes (Triton's default scheduler); with it, batches reach the
    largest preferred size (else max_batch_size) after at most the queue delay."""
    if config.max_batch_size == 0:
        if "dynamic_batching" in fields:  # its queue policy and priorities too: nothing reads them
            ignored["dynamic_batching"] = "max_batch_size 0: the model does not batch; each request runs alone"
        if not config.input:  # unset (proto3 cannot tell it from 0): completed from the graph, as
            return None       # Triton's auto-complete does; with inputs declared, their dims are whole
        return BatchingFacts(max_batch_size=0, max_queue_delay_ms=0)
    if "dynamic_batching" not in fields:
        return BatchingFacts(max_batch_size=1, max_queue_delay_ms=0)
    dynamic = config.dynamic_batching
    for name in sorted(_set_fields(dynamic) - _HONOURED_BATCHING):
        ignored[f"dynamic_batching.{name}"] = _IGNORED_BATCHING.get(name, "not used")
    preferred = [n for n in dynamic.preferred_batch_size if 0 < n <= config.max_batch_size]
    default = dynamic.default_queue_policy
    queue = _queue_policy(default) if dynamic.HasField("default_queue_policy") else None
    return BatchingFacts(max_batch_size=max(preferred, default=config.max_batch_size),
                         max_queue_delay_ms=dynamic.max_queue_delay_microseconds / 1000,
                         queue=None if queue is None or queue == QueuePolicy() else queue,
                         priorities=_priorities(dynamic, source))


ControlKind = Literal["start", "end", "ready", "correlation_id"]
_CONTROL_KINDS: dict[str, ControlKind] = {
    "CONTROL_SEQUENCE_START": "start", "CONTROL_SEQUENCE_END": "end", "CONTROL_SEQUENCE_READY": "ready",
    "CONTROL_SEQUENCE_CORRID": "correlation_id"}
_IGNORED_SEQUENCE = {"oldest.preserve_ordering": "answers always go to their own requests",
                     "direct.minimum_slot_utilization": "no slots: requests of any sequences batch as they come",
                     "state.use_same_buffer_for_input_output": "states are host arrays",
                     "state.use_growable_memory": "states are host arrays"}


def _sequence(config: Any, source: str, ignored: dict[str, str]) -> tuple[Sequences, BatchingFacts]:
    """Triton's sequence batching: its controls and states, filled by the server, and how the
    requests of different sequences batch (either strategy's delay and sizes; no slots)."""
    given = config.sequence_batching
    if config.max_batch_size == 0:
        raise FactsError(f"{source}: sequence_batching with max_batch_size 0: a sequence model here batches (its "
                         "requests, one row each, batch across sequences); give it max_batch_size 1 or more")
    if given.iterative_sequence:
        raise FactsError(f"{source}: sequence_batching.iterative_sequence: a model that schedules its own next "
                         "step (decoupled) is not served")
    strategy = given.oldest if given.HasField("oldest") else given.direct
    parts = {"oldest": [given.oldest], "direct": [given.direct], "state": list(given.state)}
    for name, why in _IGNORED_SEQUENCE.items():
        part, field = name.split(".")
        if any(field in _set_fields(message) for message in parts[part]):
            ignored[f"sequence_batching.{name}"] = why
    preferred = [n for n in getattr(strategy, "preferred_batch_size", []) if 0 < n <= config.max_batch_size]
    candidates = given.oldest.max_candidate_sequences if given.HasField("oldest") else 0
    try:
        sequence = Sequences(controls=[_control(c, source) for c in given.control_input],
                             states=[_state(s, source) for s in given.state],
                             **({"idle_ms": given.max_sequence_idle_microseconds / 1000}
                                if given.max_sequence_idle_microseconds else {}),
                             **({"max_sequences": candidates} if candidates else {}))
    except ValidationError as e:
        raise FactsError(f"{source}: sequence_batching: {describe(e)}") from e
    return sequence, BatchingFacts(max_batch_size=max(preferred, default=config.max_batch_size),
                                   max_queue_delay_ms=strategy.max_queue_delay_microseconds / 1000)


def _control(given: Any, source: str) -> SequenceControl:
    if len(given.control) != 1:
        raise FactsError(f"{source}: sequence_batching control_input {given.name!r}: one control per input, "
                         f"got {len(given.control)}")
    control = given.control[0]
    kind = _CONTROL_KINDS[model_config_pb2.ModelSequenceBatching.Control.Kind.Name(control.kind)]
    if kind == "correlation_id":
        datatype = from_triton_type(model_config_pb2.DataType.Name(control.data_type))
        return SequenceControl(input=given.name, kind=kind, datatype=datatype)
    values = [("INT32", list(control.int32_false_true)), ("FP32", list(control.fp32_false_true)),
              ("BOOL", [float(v) for v in control.bool_false_true])]
    found = [(datatype, pair) for datatype, pair in values if pair]
    if len(found) != 1:
        raise FactsError(f"{source}: sequence_batching control_input {given.name!r}: a {kind} control gives its "
                         "false and true values once, as int32_false_true, fp32_false_true or bool_false_true")
    datatype, pair = found[0]
    return SequenceControl(input=given.name, kind=kind, datatype=datatype, false_true=pair)


def _state(given: Any, source: str) -> SequenceState:
    initial = None
    if len(given.initial_state) > 1:
        raise FactsError(f"{source}: sequence_batching state {given.input_name!r}: one initial_state at most")
    for start in given.initial_state:
        if start.WhichOneof("state_data") != "zero_data":
            raise FactsError(f"{source}: sequence_batching state {given.input_name!r}: initial_state from a data "
                             "file is not served; zero_data is")
        initial = list(start.dims)
    return SequenceState(input=given.input_name, output=given.output_name, datatype=from_triton_type(
        model_config_pb2.DataType.Name(given.data_type)), shape=list(given.dims), initial_shape=initial)


def _priorities(dynamic: Any, source: str) -> Priorities | None:
    """Triton's priority levels; its rules for them (a default level among the levels, level
    policies for levels that exist) refused with why, as Triton refuses the configuration."""
    levels = dynamic.priority_levels
    if not levels:
        if dynamic.default_priority_level or dynamic.priority_queue_policy:
            raise FactsError(f"{source}: dynamic_batching sets default_priority_level or priority_queue_policy "
                             "without priority_levels")
        return None
    queues = {level: _queue_policy(policy) for level, policy in sorted(dynamic.priority_queue_policy.items())}
    try:
        return Priorities(levels=levels, default_level=dynamic.default_priority_level, queues=queues)
    except ValidationError as e:
        raise FactsError(f"{source}: dynamic_batching's priorities: {describe(e)} (default_priority_level "
                         f"{dynamic.default_priority_level}, priority_levels {levels})") from e


def _queue_policy(policy: Any) -> QueuePolicy:
    """A Triton queue policy as queue bounds (all 0: none). A request's own timeout parameter
    is its deadline whatever allow_timeout_override says."""
    timeout_us = policy.default_timeout_microseconds
    return QueuePolicy(max_requests=policy.max_queue_size, timeout_ms=timeout_us / 1000,
                       timeout_action="delay" if timeout_us and policy.timeout_action == _TIMEOUT_DELAY else "reject")


def _version_policy(config: Any) -> VersionPolicy:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        return VersionPolicy(kind="specific", versions=list(policy.specific.versions))
    return VersionPolicy(kind="latest", num_versions=policy.latest.num_versions or 1)
