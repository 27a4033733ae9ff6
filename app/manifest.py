"""The model manifest: what a model is, how to feed it, and which files hold it.

This module is the one reader and validator of `models/<name>/<version>/manifest.json`.
Training writes manifests through these types and the service reads them through
`load_manifest`, so both sides agree on one schema.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.ensemble_plan import waves

MANIFEST_FILE = "manifest.json"

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
MAX_NAME_LENGTH = 128
"""A model's name is its folder's name: these keep it one plain folder name (no '..', no
separators, no NUL) that every client path can check before the disk is touched. Upper
case is allowed, as Triton's repositories and Hugging Face's model names use it; the name
is the folder's exactly (app/repository/disk.py), also where the file system ignores case."""
MAX_VERSION_DIGITS = 18  # a version is a number of at most this many digits: it fits an int64

# V2 protocol datatype names and the numpy dtypes they map to: the one list of both.
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",  # string tensors: numpy object arrays of str (ORT's tensor(string)) or bytes
}

_TRITON_NAMES = {"BYTES": "STRING"}  # Triton's model configuration names V2's BYTES "TYPE_STRING"


def triton_type(datatype: str) -> str:
    """A V2 datatype as Triton's model configuration writes it: FP32 -> TYPE_FP32, BYTES -> TYPE_STRING."""
    return "TYPE_" + _TRITON_NAMES.get(datatype, datatype)


def from_triton_type(name: str) -> str:
    """Triton's TYPE_... name as a V2 datatype (the inverse of `triton_type`)."""
    bare = name.removeprefix("TYPE_")
    return next((v2 for v2, triton in _TRITON_NAMES.items() if triton == bare), bare)


CLASSIFICATION_TASKS = ("image-classification", "text-classification")
TENSORS_TASK: Literal["tensors"] = "tensors"
"""A model served as it is, tensors in and tensors out (V2 only): a drop-in `model.onnx`
whose configuration is completed from its graph (app/graph.py)."""

Variant = Literal["fp32", "int8", "fp16"]


class ManifestError(ValueError):
    """A manifest that is missing, malformed or disagrees with its files."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The service adds outputs of its own under this prefix (app/codecs.py); models may not use it.
RESERVED_PREFIX = "ortserve."


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    datatype: str = Field(json_schema_extra={"enum": list(DATATYPES)})
    shape: list[int]
    """Dimensions, -1 for a dynamic axis. The first axis is the batch axis where the model
    batches (then it is -1); a model that does not batch has its shapes as declared."""
    reshape: list[int] | None = Field(default=None, exclude_if=lambda value: value is None)  # no "reshape": null
    """An item's dimensions as the graph takes (an input) or gives (an output) them, where
    they differ from what clients send and get (Triton's `reshape`: dims [1000] served for a
    graph's [1000, 1, 1]); the same values in the same order. None: as `shape`."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"datatype must be one of {list(DATATYPES)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _dims_are_valid(self) -> TensorSpec:
        if any(d == 0 or d < -1 for d in self.shape + (self.reshape or [])):
            raise ValueError(f"tensor {self.name!r}: dimensions must be positive or -1")
        if self.reshape is not None and self.reshape.count(-1) > 1:
            raise ValueError(f"tensor {self.name!r}: reshape {self.reshape} has more than one -1: which of them "
                             "takes how many values would be a guess")
        if self.name.startswith(RESERVED_PREFIX):
            raise ValueError(f"tensor {self.name!r}: names starting {RESERVED_PREFIX!r} are the service's own")
        return self

    @property
    def numpy_dtype(self) -> str:
        return DATATYPES[self.datatype]

    def item_shape(self, batches: bool) -> list[int]:
        """One request item's dimensions: all but the batch axis where the model batches."""
        return self.shape[1:] if batches else self.shape

    def graph_item_shape(self, batches: bool) -> list[int]:
        """One item's dimensions as the graph has them (`reshape`, where given)."""
        return self.reshape if self.reshape is not None else self.item_shape(batches)

    def graph_shape(self, batches: bool) -> list[int]:
        """The tensor's dimensions as the graph has them, batch axis included where it batches."""
        return [-1, *self.graph_item_shape(batches)] if batches else self.graph_item_shape(batches)

    def reshape_problem(self, batches: bool) -> str | None:
        """Why `reshape` cannot hold an item's values (None where it can, or is not given).
        Checked where the values' count is fixed on both sides; where a side has a dynamic
        axis, a request whose values do not fit is refused when it comes."""
        if self.reshape is None:
            return None
        item = self.item_shape(batches)
        if item.count(-1) > 1:
            return (f"tensor {self.name!r}: dims {item} have more than one -1, so the graph's values could not be "
                    "given them")
        values = math.prod(item)
        fixed = math.prod(d for d in self.reshape if d != -1)  # the graph's values per step of its -1, if any
        if -1 in item:
            if -1 not in self.reshape:
                return (f"tensor {self.name!r}: dims {item} hold any number of values, reshape {self.reshape} a "
                        f"fixed {fixed}")
        elif -1 not in self.reshape and values != fixed:
            return f"tensor {self.name!r}: dims {item} hold {values} values, reshape {self.reshape} {fixed}"
        elif values % fixed:
            return f"tensor {self.name!r}: dims {item} hold {values} values, which reshape {self.reshape} cannot take"
        return None


class ImagePreprocessing(_Strict):
    """Pixels p in [0, 255] become ((p * scale) - mean) / std, shaped (C, H, W); with three
    channels (RGB, in that order) mean and std may be one value each or one per channel
    (ImageNet's [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225] with scale 1/255)."""

    kind: Literal["image"] = "image"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3] = 1
    scale: float = Field(gt=0)
    mean: float | list[float]
    std: float | list[float]
    resize: Literal["bilinear", "nearest"] = "bilinear"
    background: Literal["dark", "light", "any"] = "dark"
    """The training images' background, for greyscale models. A served image whose border is
    on the other side of mid-grey (a product photo: a dark object on white) is inverted
    before scaling; "any" inverts none. Colour images are never inverted."""

    @model_validator(mode="after")
    def _per_channel(self) -> ImagePreprocessing:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != self.channels:
                raise ValueError(f"{name} has {len(value)} values for {self.channels} channel(s): give one, or one "
                                 "per channel")
        stds = self.std if isinstance(self.std, list) else [self.std]
        if not all(v > 0 for v in stds):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    def per_channel(self, name: Literal["mean", "std"]) -> tuple[float, ...]:
        """mean or std as one value per channel."""
        value = getattr(self, name)
        return tuple(value) if isinstance(value, list) else (value,) * self.channels


class TextPreprocessing(_Strict):
    """Text becomes token ids with the project tokenizer and the model's vocabulary."""

    kind: Literal["text"] = "text"
    tokenizer: Literal["ptb-words-v1"] = "ptb-words-v1"
    lowercase: bool = True
    vocabulary_file: str = "vocab.txt"
    pad_token: str = "<pad>"
    unknown_token: str = "<unk>"
    max_length: int = Field(gt=0)
    """Texts longer than this many tokens are truncated."""


Preprocessing = Annotated[ImagePreprocessing | TextPreprocessing, Field(discriminator="kind")]


class VariantFile(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    metrics: dict[str, float | int | None] = Field(default_factory=dict)


class FileDigest(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)


class VersionPolicy(_Strict):
    """Which of a model's versions are served (Triton's version_policy): the newest
    `num_versions`, all of them, or the listed `versions`."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = Field(default=1, gt=0)
    versions: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _versions_for_specific(self) -> VersionPolicy:
        if (self.kind == "specific") != bool(self.versions):
            raise ValueError("versions are listed for the 'specific' policy, and only for it")
        return self

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """'latest', 'latest:N', 'all' or 'specific:V1,V2,...' (the setting's form)."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                return cls(kind="latest", num_versions=int(arg) if arg else 1)
            if kind == "all" and not arg:
                return cls(kind="all")
            if kind == "specific":
                return cls(kind="specific", versions=[int(v) for v in arg.split(",")])
        except (ValueError, ValidationError) as e:
            raise ValueError(f"version policy {text!r}: {e}") from e
        raise ValueError(f"version policy {text!r}: expected latest, latest:N, all or specific:V1,V2")

    def select(self, versions: Iterable[int]) -> list[int]:
        """The versions this policy serves out of those available, newest first."""
        newest_first = sorted(set(versions), reverse=True)
        if self.kind == "latest":
            return newest_first[: self.num_versions]
        if self.kind == "all":
            return newest_first
        return [v for v in newest_first if v in self.versions]

    def as_triton(self) -> dict[str, Any]:
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "all":
            return {"all": {}}
        return {"specific": {"versions": sorted(self.versions)}}


def _unset(value: object) -> bool:
    return value is None


class QueuePolicy(_Strict):
    """A model's own bounds on its queue (Triton's dynamic_batching.default_queue_policy), on
    top of the server's (max_queue_size rows, max_queue_bytes): a request past one is refused
    (503, Retry-After; gRPC RESOURCE_EXHAUSTED), as the server's bounds refuse it."""

    max_requests: int = Field(default=0, ge=0)
    """Requests queued at most (Triton's max_queue_size); 0: the server's bounds only."""
    timeout_ms: float = Field(default=0, ge=0)
    """How long a request may wait wholly queued (Triton's default_timeout_microseconds); 0: for
    ever. A request's own timeout (its deadline) applies beside it."""
    timeout_action: Literal["reject", "delay"] = Field(default="reject", exclude_if=lambda value: value == "reject")
    """What befalls a request past timeout_ms (Triton's timeout_action): reject, refused when the
    next batch is formed; delay, it goes behind the queued requests of its level (and of the
    higher ones) that are not late, to be served once they are."""


class Priorities(_Strict):
    """Triton's priority levels (dynamic_batching.priority_levels): a request's `priority`
    parameter, 1 the highest, puts it ahead of every queued request of a lower level (a
    higher number); within a level, requests keep their order. 0 or none: `default_level`.
    A level may bound its own queue (Triton's priority_queue_policy); the others have the
    model's `queue`."""

    levels: int = Field(ge=1)
    default_level: int = Field(ge=1)
    queues: dict[int, QueuePolicy] = Field(default_factory=dict, exclude_if=lambda value: not value)
    """A level's own queue bounds, replacing the model's for its requests."""

    @model_validator(mode="after")
    def _levels_exist(self) -> Priorities:
        if self.default_level > self.levels:
            raise ValueError(f"default_level {self.default_level} is not one of the levels 1 to {self.levels}")
        beyond = sorted(level for level in self.queues if not 1 <= level <= self.levels)
        if beyond:
            raise ValueError(f"queues for levels {beyond}: the levels are 1 to {self.levels}")
        return self

    def queue_of(self, level: int, default: QueuePolicy | None) -> QueuePolicy | None:
        return self.queues.get(level, default)


class BatchingDefaults(_Strict):
    """The model's own batching; the server's settings can override both for every model.
    Chosen at build time (training/config.py), or measured at load or import
    (app/batch_sizing.py), where the model's costs are known."""

    max_batch_size: int = Field(ge=0)
    """0: the model does not batch (Triton's meaning): each request runs alone, its tensors
    shaped as declared, with no batch axis."""
    max_queue_delay_ms: float = Field(ge=0)
    reason: str = ""
    """How this was chosen, or why the model does not batch (shown in /config)."""
    cost_per_item_ms: dict[int, float] = Field(default_factory=dict)
    """What one item cost at each batch size, where it was measured."""
    queue: QueuePolicy | None = Field(default=None, exclude_if=_unset)
    """The model's own queue bounds; None: the server's only."""
    priorities: Priorities | None = Field(default=None, exclude_if=_unset)
    """Priority levels for its requests; None: one level, requests in their order."""
    pad: bool = Field(default=False, exclude_if=lambda value: not value)
    """A model with a dynamic axis besides the first: requests of other lengths are batched
    together, zero-padded to the longest, as its configuration asked, the model having been run
    so and answered each what it answers alone (it masks its padding, as a transformer does
    with its attention_mask). False: a request batches only with requests of its shapes."""


MAX_INSTANCES = 256
"""Instances of one model at most: each is a thread in every worker that runs it."""


class ModelRuntimeOptions(_Strict):
    """ONNX Runtime's options for one model's sessions, where the model needs its own; each
    left unset is the server's. Triton's ONNX Runtime backend reads the same from a
    config.pbtxt (`optimization.graph.level`; the parameters `intra_op_thread_count`,
    `inter_op_thread_count`, `execution_mode`, `enable_mem_arena`, `enable_mem_pattern`), and
    how many instances of the model run (its instance_group)."""

    graph_optimization: Literal["disabled", "basic", "extended", "all"] | None = Field(default=None, exclude_if=_unset)
    """How far ONNX Runtime rewrites the graph before it runs it (the server's: all). Fusions
    change float results in the last bits, and a graph an optimizer mishandles loads or
    answers only at a lower level."""
    intra_op_threads: int | None = Field(default=None, ge=1, exclude_if=_unset)
    """Threads that run one batch's operators (the server's: its share of the CPUs, and a wide
    session for large batches, which a model that sets this does not get)."""
    inter_op_threads: int | None = Field(default=None, ge=1, exclude_if=_unset)
    """Threads that run independent branches at once (execution_mode parallel only; unset:
    as many as intra_op_threads)."""
    execution_mode: Literal["sequential", "parallel"] | None = Field(default=None, exclude_if=_unset)
    memory_arena: bool | None = Field(default=None, exclude_if=_unset)
    """ONNX Runtime's CPU memory arena (on by default): off returns a batch's memory when it ends."""
    memory_pattern: bool | None = Field(default=None, exclude_if=_unset)
    """Memory planned from the shapes seen before (on by default)."""
    instances: int | None = Field(default=None, ge=1, le=MAX_INSTANCES, exclude_if=_unset)
    """Batches of this model that run at once in the whole server (Triton's instance_group
    counts; unset: the server's inference_threads in each worker). Each worker runs its share,
    rounded up (`per_worker`), each on an inference thread of its own, and the ORT threads of
    the worker's share of the CPUs are divided among them. On two cores and one worker, two
    served large requests faster and small ones slower (docs/benchmarks.md, "Instances")."""

    def per_worker(self, workers: int) -> int | None:
        """The instances each of `workers` worker processes runs (None: the server's choice)."""
        return None if self.instances is None else -(-self.instances // workers)


# Triton's names for these (its ONNX Runtime backend's): optimization.graph.level's numbers,
# and the model parameters (string values) that carry the others.
TRITON_GRAPH_LEVELS: dict[int, str] = {0: "all", -1: "basic", 1: "extended", 2: "disabled"}
TRITON_ORT_PARAMETERS: dict[str, str] = {
    "intra_op_thread_count": "intra_op_threads", "inter_op_thread_count": "inter_op_threads",
    "execution_mode": "execution_mode", "enable_mem_arena": "memory_arena", "enable_mem_pattern": "memory_pattern"}


class SequenceControl(_Strict):
    """A graph input the server fills for each request of a sequence (Triton's control_input)."""

    input: str = Field(min_length=1)
    kind: Literal["start", "end", "ready", "correlation_id"]
    """What it tells the model (Triton's CONTROL_SEQUENCE_START, _END, _READY and _CORRID): that
    this request begins its sequence, ends it, is a real request (always, here: batches hold no
    empty slots), and the sequence's ID."""
    datatype: str = Field(json_schema_extra={"enum": list(DATATYPES)})
    """INT32, FP32 or BOOL for a flag; for the correlation ID UINT64, INT64, UINT32, INT32 or BYTES."""
    false_true: list[float] | None = Field(default=None, min_length=2, max_length=2)
    """A flag's values when false and when true (Triton's int32_false_true, ...)."""

    @model_validator(mode="after")
    def _typed(self) -> SequenceControl:
        flag = self.kind != "correlation_id"
        if flag and (self.datatype not in ("INT32", "FP32", "BOOL") or self.false_true is None):
            raise ValueError(f"control {self.input!r} ({self.kind}): a flag is INT32, FP32 or BOOL with its false "
                             "and true values")
        if not flag and self.datatype not in ("UINT64", "INT64", "UINT32", "INT32", "BYTES"):
            raise ValueError(f"control {self.input!r}: a correlation ID is UINT64, INT64, UINT32, INT32 or BYTES, "
                             f"not {self.datatype}")
        return self

    def spec(self) -> TensorSpec:
        """The graph's input, one value per request, as a batching model takes it."""
        return TensorSpec(name=self.input, datatype=self.datatype, shape=[-1, 1])


class SequenceState(_Strict):
    """A state the server keeps for each sequence (Triton's implicit state): the graph's
    `output` after one request is its `input` on the sequence's next; zeros on its first."""

    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    datatype: str = Field(json_schema_extra={"enum": list(DATATYPES)})
    shape: list[int]
    """One sequence's state, without the batch axis (-1: an axis whose length may change)."""
    initial_shape: list[int] | None = Field(default=None, exclude_if=_unset)
    """The shape of its first value, zeros (Triton's initial_state zero_data); None: `shape`, a
    -1 axis of length 0 (a state that grows, as a cache does)."""

    @model_validator(mode="after")
    def _numeric(self) -> SequenceState:
        if self.datatype == "BYTES":
            raise ValueError(f"state {self.input!r}: a state is numeric, not BYTES")
        if self.initial_shape is not None and any(d < 0 for d in self.initial_shape):
            raise ValueError(f"state {self.input!r}: its initial shape {self.initial_shape} is fixed (no -1)")
        return self

    def spec(self) -> TensorSpec:
        return TensorSpec(name=self.input, datatype=self.datatype, shape=[-1, *self.shape])

    def initial(self) -> np.ndarray:
        """The state a sequence starts with: one row of zeros."""
        shape = self.initial_shape if self.initial_shape is not None else [max(0, d) for d in self.shape]
        return np.zeros([1, *shape], dtype=DATATYPES[self.datatype])


class Sequences(_Strict):
    """A stateful model's requests come in sequences (Triton's sequence_batching): each names its
    sequence (`sequence_id`), the first says it starts one, the last that it ends. A sequence's
    requests run one at a time in their order; requests of different sequences batch together.
    The server fills the control inputs and keeps the states."""

    controls: list[SequenceControl] = Field(default_factory=list)
    states: list[SequenceState] = Field(default_factory=list)
    idle_ms: float = Field(default=1000.0, gt=0)
    """A sequence with no request for this long is ended (Triton's max_sequence_idle_microseconds)."""
    max_sequences: int = Field(default=1024, ge=1)
    """Sequences active at once, in each worker: one more is refused (503) until one ends."""

    def graph_inputs(self) -> list[TensorSpec]:
        return [c.spec() for c in self.controls] + [s.spec() for s in self.states]

    def names(self) -> set[str]:
        """The graph inputs the server fills."""
        return {spec.name for spec in self.graph_inputs()}


class EnsembleStep(_Strict):
    """One step of an ensemble (Triton's ModelEnsembling.Step): a served model run on some of
    the ensemble's tensors, making others."""

    model: str = Field(pattern=MODEL_NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    version: int | None = Field(default=None, gt=0)
    """The version it runs; None: the newest served when the request comes (Triton's -1)."""
    inputs: dict[str, str] = Field(min_length=1)
    """The step model's input -> the ensemble tensor given to it (Triton's input_map)."""
    outputs: dict[str, str] = Field(min_length=1)
    """The step model's output -> the ensemble tensor it becomes (Triton's output_map)."""


TRITON_EXECUTION_MODES = ("sequential", "parallel")
"""execution_mode's values by Triton's number for them."""


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=MODEL_NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    version: int = Field(gt=0)
    task: Literal["image-classification", "text-classification", "tensors"]
    description: str = ""
    labels: list[str] = Field(default_factory=list)
    """The classes of the first output's last axis: two at least for a classifier; for a
    tensors model optional (then V2's classification extension can name them)."""
    scores: Literal["logits", "probabilities"] = "logits"
    """What the first output holds: softmax makes probabilities only of logits."""
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocessing: Preprocessing | None = None
    """How raw instances become the model's input (classification tasks); None for tensors."""
    variants: dict[Variant, VariantFile] = Field(default_factory=dict)
    """The model's files, one at least; none for an ensemble."""
    extra_files: dict[str, FileDigest] = Field(default_factory=dict)
    """Every other file the service reads for this model (e.g. the vocabulary), with its digest."""
    version_policy: VersionPolicy | None = None
    """Which versions of this model to serve, read from its newest version's manifest;
    None leaves it to the server's settings."""
    batching: BatchingDefaults
    response_cache: bool = Field(default=False, exclude_if=lambda value: not value)
    """Answers kept for inputs seen before (Triton's response_cache), in a cache of the server's
    response_cache_bytes: for a deterministic model that gets the same inputs again."""
    preferred_variant: dict[Literal["cpu", "cuda"], Variant] = Field(default_factory=dict)
    """Which variant `variant=auto` serves on each device; chosen by measurement at build time."""
    onnxruntime: ModelRuntimeOptions | None = Field(default=None, exclude_if=_unset)
    """The model's own ONNX Runtime options; None: the server's."""
    ensemble: list[EnsembleStep] | None = Field(default=None, exclude_if=_unset)
    """An ensemble: no graph of its own, its steps run other served models on its tensors
    (Triton's platform "ensemble" with its ensemble_scheduling)."""
    sequence: Sequences | None = Field(default=None, exclude_if=_unset)
    """A stateful model: its requests come in sequences, whose controls and states the server
    fills (Triton's sequence_batching); `inputs` and `outputs` are what clients send and get."""
    training: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"input and output names must be unique, got {names}")
        if self.ensemble is not None:
            self._ensemble_problem()
        elif not self.variants:
            raise ValueError("variants: at least one model file is listed")
        if isinstance(self.preprocessing, TextPreprocessing) and self.preprocessing.vocabulary_file not in self.extra_files:
            raise ValueError(f"the vocabulary file {self.preprocessing.vocabulary_file!r} must be listed, with its "
                             "digest, in extra_files")
        missing = {v for v in self.preferred_variant.values() if v not in self.variants}
        if missing:
            raise ValueError(f"preferred_variant names variants {sorted(missing)} that are not listed")
        reshapes = [p for t in self.inputs + self.outputs if (p := t.reshape_problem(self.batches))]
        if reshapes:
            raise ValueError("; ".join(reshapes))
        if self.batches:
            unbatched = [t.name for t in self.inputs + self.outputs if not t.shape or t.shape[0] != -1]
            if unbatched:
                raise ValueError(f"tensors {unbatched}: the first (batch) axis must be -1 where the model batches "
                                 "(max_batch_size 0 says it does not)")
        if self.task == TENSORS_TASK:
            if self.preprocessing is not None:
                raise ValueError("a tensors model takes no preprocessing: its clients send tensors")
        elif self.preprocessing is None or len(self.labels) < 2:
            raise ValueError(f"a {self.task} model needs its preprocessing and at least two labels")
        elif not self.batches:
            raise ValueError(f"a {self.task} model batches: its tensors have a first, batch axis")
        problem = self._task_inputs_problem() or self._sequence_problem()
        if problem:
            raise ValueError(problem)
        logits = self.outputs[0]
        if self.labels and (not logits.shape or logits.shape[-1] != len(self.labels)):
            raise ValueError(
                f"output {logits.name!r} has {logits.shape[-1] if logits.shape else 'no'} classes "
                f"but {len(self.labels)} labels are listed"
            )
        return self

    def _ensemble_problem(self) -> None:
        if self.variants or self.task != TENSORS_TASK or self.preprocessing is not None:
            raise ValueError("an ensemble has no files of its own (variants) and takes tensors (task 'tensors', "
                             "no preprocessing)")
        if not self.ensemble:
            raise ValueError("an ensemble has one step at least")
        itself = [step.model for step in self.ensemble if step.model == self.name]
        if itself:
            raise ValueError(f"a step of ensemble {self.name!r} runs the ensemble itself")
        waves(self.ensemble, [t.name for t in self.inputs], [t.name for t in self.outputs])

    def _sequence_problem(self) -> str | None:
        """Where a sequence model's configuration could not be served: why, else None."""
        sequence = self.sequence
        if sequence is None:
            return None
        if self.task != TENSORS_TASK or not self.batches or self.ensemble is not None:
            return ("a sequence model is a tensors model that batches (max_batch_size 1 or more): its requests are "
                    "one row each")
        if self.response_cache:
            return "a sequence model's answers depend on its state: it has no response cache"
        filled = [spec.name for spec in sequence.graph_inputs()]
        clash = sorted({n for n in filled if filled.count(n) > 1} | (set(filled) & {t.name for t in self.inputs}))
        if clash:
            return f"inputs {clash}: filled by the server for each sequence (controls, states), once, not by clients"
        kinds = [c.kind for c in sequence.controls]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            return f"controls {twice}: one input each"
        return None

    def graph_inputs(self) -> list[TensorSpec]:
        """Every input the graph takes: clients' and, for a sequence model, the server's."""
        return self.inputs if self.sequence is None else self.inputs + self.sequence.graph_inputs()

    def _task_inputs_problem(self) -> str | None:
        """Where a classification task's preprocessing makes tensors its graph does not take
        (a 4-feature MLP declared a 1x4 image would fail every request): why, else None."""
        p = self.preprocessing
        if isinstance(p, ImagePreprocessing):
            want = [-1, p.channels, p.height, p.width]
            if len(self.inputs) != 1 or self.inputs[0].datatype != "FP32" or len(self.inputs[0].shape) != 4 or any(
                    d not in (-1, w) for d, w in zip(self.inputs[0].shape, want, strict=True)):
                return (f"an image-classification model with this preprocessing takes one FP32 input of shape {want}; "
                        f"declared: {[(t.name, t.datatype, t.shape) for t in self.inputs]}")
        if isinstance(p, TextPreprocessing):
            shapes = [(t.datatype, len(t.shape)) for t in self.inputs]
            if shapes != [("INT64", 2), ("INT64", 1)]:
                return ("a text-classification model takes two INT64 inputs, token ids [-1, -1] and lengths [-1]; "
                        f"declared: {[(t.name, t.datatype, t.shape) for t in self.inputs]}")
        if self.task != TENSORS_TASK and len(self.outputs[0].shape) != 2:
            return f"a classifier's first output is [-1, classes]; declared: {self.outputs[0].shape}"
        return None

    @property
    def batches(self) -> bool:
        """Whether requests are batched along a first axis (Triton's max_batch_size > 0)."""
        return self.batching.max_batch_size > 0


def sha256_of(path: Path) -> str:
    """The one way files are hashed, for model artifacts and datasets alike."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest(model_dir: Path, *, verify_files: bool = True) -> Manifest:
    """Read and validate `model_dir/manifest.json`, which must lie in `<name>/<version>/`;
    optionally check every file's sha256."""
    path = model_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: no manifest found") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise ManifestError(f"{path}: invalid manifest:\n{e}") from e
    if manifest.version != _version_of(model_dir):
        raise ManifestError(
            f"{path}: manifest says version {manifest.version} "
            f"but it lies in folder {model_dir.name!r}"
        )
    if manifest.name != model_dir.parent.name:
        raise ManifestError(f"{path}: manifest names model {manifest.name!r} but it lies in folder "
                            f"{model_dir.parent.name!r}")
    if verify_files:
        for entry in manifest.variants.values():
            read_verified(model_dir, entry.file, entry.sha256)
        for file, digest in manifest.extra_files.items():
            read_verified(model_dir, file, digest.sha256)
    return manifest


def outside(folder: Path, file: str, where: str) -> str | None:
    """None where `folder/file` lies in `folder`, else how it leaves it, for a message that
    names the file: its name leads out, or it is reached through a link that does (a model
    linked into a Hugging Face, DVC or git-annex cache, say). Links are followed only where
    they stay in: the folder is the boundary that names are checked against."""
    path = folder / file
    if path.resolve().is_relative_to(folder.resolve()):
        return None
    name = Path(file)
    if name.is_absolute() or ".." in name.parts:
        return f"lies outside {where}"
    return f"is a link that leads out of {where}; links out of it are not followed: copy the file in"


def read_verified(model_dir: Path, file: str, sha256: str) -> bytes:
    """The bytes of `model_dir/file`, read once and checked against `sha256`: a caller that
    uses these bytes uses exactly what was checked, whatever happens to the file later."""
    path = model_dir / file
    if (leaves := outside(model_dir, file, "the model's folder")) is not None:
        raise ManifestError(f"{model_dir}: file {file!r} {leaves}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{model_dir}: file {file!r} is missing") from None
    except OSError as e:
        raise ManifestError(f"{model_dir}: file {file!r} cannot be read: {e}") from e
    actual = sha256_of_bytes(data)
    if actual != sha256:
        raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {sha256}")
    return data


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = model_dir / MANIFEST_FILE
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _version_of(model_dir: Path) -> int | None:
    return int(model_dir.name) if model_dir.name.isdigit() else None


def version_folders(model_root: Path) -> Iterator[Path]:
    """The version folders of one model (`<model_root>/<digits>/` with a manifest), in no order."""
    return (p.parent for p in model_root.glob(f"*/{MANIFEST_FILE}") if p.parent.name.isdigit())


def latest_version(model_root: Path) -> Path | None:
    """The highest version folder of one model; versions compare as numbers (10 > 9)."""
    return max(version_folders(model_root), key=lambda p: int(p.name), default=None)
