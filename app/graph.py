"""What an ONNX graph says of itself, for completing a configuration it was not given
(app/completion.py): its tensors, which of them declare no shape at all, whether its first
axis is a batch axis (decided by running it, not guessed), whether its first output looks
like probabilities, and where a declared configuration disagrees with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import empty_pb2, unknown_fields
from google.protobuf.message import DecodeError

from app.batching.collate import concatenate_padded
from app.manifest import DATATYPES, Manifest, TensorSpec

DROP_IN_FILE = "model.onnx"
# ONNX Runtime's type names and the V2 datatype of each: ORT says numpy's names but for these.
_ORT_NAMES = {"float32": "float", "float64": "double", "object": "string"}
ORT_TYPES = {f"tensor({_ORT_NAMES.get(numpy, numpy)})": v2 for v2, numpy in DATATYPES.items()}
_SIZE_OF_DYNAMIC_AXES = 3  # the length given to a dynamic non-batch axis in the generated inputs


class GraphError(ValueError):
    """A graph this server cannot serve, with why."""


def graph_tensors(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as declared: -1 for every dynamic or symbolic axis."""
    inputs = [_spec(node, "input") for node in session.get_inputs()]
    outputs = [_spec(node, "output") for node in session.get_outputs()]
    if not inputs:
        raise GraphError("the graph has no inputs")
    return inputs, outputs


# Field numbers of onnx.proto (ONNX's wire format, frozen by its compatibility rules): the
# path from a model to whether a graph input or output declares a shape.
_MODEL_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 11, 12
_VALUE_INFO_NAME, _VALUE_INFO_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE = 1, 2, 1, 2


def shapeless_tensors(session: ort.InferenceSession, model_bytes: bytes) -> frozenset[str]:
    """The graph's input and output tensors of no known shape, not even a rank: ONNX Runtime
    gives `[]` for these and for scalars alike, and the file tells them apart (a scalar has
    a shape with no dimensions, these none, and ORT's shape inference found none either).
    Read with protobuf's unknown fields (the serving install has no `onnx` package), and
    only where ORT gives `[]`: it copies the graph's bytes once."""
    empty = {node.name for node in [*session.get_inputs(), *session.get_outputs()] if not node.shape}
    if not empty:
        return frozenset()
    try:
        (graph,) = _fields(model_bytes, _MODEL_GRAPH) or [b""]
        found = set()
        for value_info in _fields(graph, _GRAPH_INPUT) + _fields(graph, _GRAPH_OUTPUT):
            names = _fields(value_info, _VALUE_INFO_NAME)
            tensor_types = [t for type_ in _fields(value_info, _VALUE_INFO_TYPE) for t in _fields(type_, _TYPE_TENSOR)]
            if names and tensor_types and not any(_fields(t, _TENSOR_SHAPE) for t in tensor_types):
                found.add(names[0].decode("utf-8", "replace"))
    except (DecodeError, ValueError):  # ORT loaded it, so this is not expected: then nothing is told apart
        return frozenset()
    return frozenset(found & empty)


def _fields(message: bytes, number: int) -> list[bytes]:
    """The length-delimited fields `number` of a serialized message, in order."""
    parsed = empty_pb2.Empty.FromString(message)
    return [field.data for field in unknown_fields.UnknownFieldSet(parsed)
            if field.field_number == number and isinstance(field.data, bytes)]


def first_axis_dynamic(specs: list[TensorSpec]) -> str | None:
    """None where every tensor has a dynamic first axis (it may be a batch axis), else why not."""
    for spec in specs:
        if not spec.shape:
            return f"{spec.name!r} is a scalar"
        if spec.shape[0] != -1:
            return f"{spec.name!r} has a fixed first axis of {spec.shape[0]}"
    return None


_ZIPMAP_HINT = ("; a sequence of maps is what scikit-learn classifiers converted by skl2onnx give by "
                "default (ZipMap): convert with options={'zipmap': False} for a tensor of probabilities")
"""V2 has tensors only, as Triton's ONNX Runtime backend; the commonest such graph, and its remedy."""


def _spec(node: Any, kind: str) -> TensorSpec:
    datatype = ORT_TYPES.get(node.type)
    if datatype is None:
        hint = _ZIPMAP_HINT if node.type.startswith("seq(map(") else ""
        raise GraphError(f"{kind} {node.name!r} is a {node.type}, which is not served (V2 datatypes: "
                         f"{sorted(set(ORT_TYPES.values()))}){hint}")
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in node.shape]
    return TensorSpec(name=node.name, datatype=datatype, shape=shape)


InputMaker = Callable[[Manifest, int], dict[str, np.ndarray]]
"""Inputs of so many rows for a model's checks: generated_inputs, or a configuration's
warm-up sample (app/warmup_samples.py) where the model refuses generated ones."""


INTEGER_CHOICES: tuple[tuple[int, int], ...] = ((1, 2), (0, 1), (1, 1))
"""What generated integer inputs are drawn from, in the order tried until the model runs:
1 and 2 (an index, a count, a length and a k all accept them), then 0 and 1 (an index into a
table of two rows: BERT's token_type_ids, a yes/no category), then 1 alone (every row alike,
which a batch check can tell less from)."""


def generated_inputs(manifest: Manifest, rows: int, seed: int = 0,
                     integers: tuple[int, int] = INTEGER_CHOICES[0]) -> dict[str, np.ndarray]:
    """Inputs of `rows` rows for a check (a model that does not batch: as declared, rows
    ignored): small values (integers drawn from `integers`, both included), every dynamic
    axis but the first of a fixed small length."""
    return _generated(manifest.graph_inputs(), manifest.batches, rows, seed, integers)


def inputs_it_takes(session: ort.InferenceSession, manifest: Manifest) -> InputMaker:
    """Generated inputs of the first INTEGER_CHOICES the model runs on (2 rows tried); where
    it runs on none, the first, whose failure the checks then report."""
    integers = _integers_it_takes(session, manifest.graph_inputs(), manifest.batches)
    return functools.partial(generated_inputs, integers=integers)


def _integers_it_takes(session: ort.InferenceSession, specs: list[TensorSpec], batches: bool) -> tuple[int, int]:
    if not any(np.dtype(spec.numpy_dtype).kind in "iu" for spec in specs):
        return INTEGER_CHOICES[0]
    for integers in INTEGER_CHOICES:
        try:
            session.run(None, _generated(specs, batches, 2, 0, integers))
        except Exception:  # ORT's own exception types: not on these values
            continue
        return integers
    return INTEGER_CHOICES[0]


def _generated(specs: list[TensorSpec], batches: bool, rows: int, seed: int,
               integers: tuple[int, int] = INTEGER_CHOICES[0]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dims = [_SIZE_OF_DYNAMIC_AXES if d == -1 else d for d in spec.graph_item_shape(batches)]
        shape = [rows, *dims] if batches else dims
        dtype = np.dtype(spec.numpy_dtype)
        if dtype.kind == "O":
            out[spec.name] = np.array([str(v) for v in rng.integers(0, 2, shape).ravel()], dtype=object).reshape(shape)
        elif dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            values = rng.integers(integers[0], integers[1] + 1, shape).astype(dtype)
            if values.size >= 2:  # both ends of the range in every input, whatever the draw: a model
                values.flat[0], values.flat[-1] = integers  # that takes only one of them fails every time
            out[spec.name] = values
    return out


def with_ranks_run(session: ort.InferenceSession, inputs: list[TensorSpec], batches: bool,
                   outputs: list[TensorSpec], shapeless: frozenset[str]) -> list[TensorSpec]:
    """`outputs`, those that declare no shape given one of the rank they have when the model
    runs (every axis dynamic: one run says no more)."""
    unknown = [spec.name for spec in outputs if spec.name in shapeless]
    if not unknown:
        return outputs
    try:
        answered = session.run(unknown, _generated(inputs, batches, 2, 0, _integers_it_takes(session, inputs, batches)))
    except Exception as e:  # ORT's own exception types
        raise GraphError(f"outputs {unknown} declare no shape in the graph, and the model failed on generated "
                         f"inputs to show theirs ({type(e).__name__}: {e}): declare the outputs' shapes in the "
                         "model's config.json (`outputs`) or its config.pbtxt (`output` dims)") from e
    ranks = {name: np.ndim(value) for name, value in zip(unknown, answered, strict=True)}
    return [spec.model_copy(update={"shape": [-1] * ranks[spec.name]}) if spec.name in ranks else spec
            for spec in outputs]


def check_batches(session: ort.InferenceSession, manifest: Manifest, run_on: InputMaker | None = None) -> str | None:
    """None where a batch of two rows answers what each row answers alone (the first axis
    is a batch axis), else why not. Run on generated inputs, or on what `run_on` makes."""
    pair = (run_on or generated_inputs)(manifest, 2)
    names = [o.name for o in manifest.outputs]
    try:
        together = session.run(names, pair)
        alone = [session.run(names, {k: v[i : i + 1] for k, v in pair.items()}) for i in range(2)]
    except Exception as e:  # ORT's own exception types: a graph that cannot run on such inputs
        return f"it failed on generated inputs of 1 and 2 rows: {type(e).__name__}: {e}"
    for n, name in enumerate(names):
        # A row per input row first: an output flattened across the batch ([N, 4] -> [4N])
        # joins up alike, and the batcher could not hand each request its rows.
        for outputs, rows in ((alone[0], 1), (together, 2)):
            if np.ndim(outputs[n]) == 0 or len(outputs[n]) != rows:
                return (f"output {name!r} has shape {list(np.shape(outputs[n]))} for {rows} input row(s): "
                        "its first axis is not one row per input row")
        joined = np.concatenate([alone[0][n], alone[1][n]])
        if together[n].shape != joined.shape or not _close(together[n], joined):
            return f"output {name!r} for a batch of 2 differs from the two rows run alone"
    return None


def check_padding(session: ort.InferenceSession, manifest: Manifest, run_on: InputMaker) -> str | None:
    """None where two rows of other lengths, zero-padded to the longer and run together as
    the batcher pads them (app/batching/collate.py), answer what each answers alone: the model
    masks its padding (a transformer's attention_mask does) and no output has an axis of the
    padded length. Else why not. Run on what `run_on` makes, the second row cut one shorter on
    every dynamic axis but the first."""
    pair = run_on(manifest, 2)
    dynamic = {spec.name: [axis + 1 for axis, d in enumerate(spec.graph_item_shape(True)) if d == -1]
               for spec in manifest.graph_inputs()}
    longer = {name: value[:1] for name, value in pair.items()}
    shorter = {}
    for name, value in pair.items():
        cut = [slice(None)] * value.ndim
        for axis in dynamic.get(name, []):
            cut[axis] = slice(0, max(1, value.shape[axis] - 1))
        shorter[name] = value[1:2][tuple(cut)]
    if all(shorter[name].shape[1:] == longer[name].shape[1:] for name in pair):
        return "its inputs are one long on their dynamic axes, so no row could be padded to check it with"
    names = [o.name for o in manifest.outputs]
    try:
        alone = [session.run(names, longer), session.run(names, shorter)]
        together = session.run(names, concatenate_padded([longer, shorter]))
    except Exception as e:  # ORT's own exception types: it cannot take padded inputs
        return f"it failed on inputs zero-padded to one length: {type(e).__name__}: {e}"
    for n, name in enumerate(names):
        for row, outputs in enumerate(alone):
            own, padded = np.asarray(outputs[n]), np.asarray(together[n])[row : row + 1]
            if own.shape != padded.shape:
                return (f"output {name!r} has shape {list(own.shape[1:])} for a row alone, {list(padded.shape[1:])} "
                        "padded: it has an axis of the padded length")
            if not _close(padded, own):
                return f"output {name!r} for a row zero-padded to a longer one's length differs from the row alone"
    return None


BATCH_TOLERANCE = 0.10
"""How far a row's outputs may move with its batch-mate, as a fraction of the output's
largest magnitude. Not zero: dynamic quantization (ONNX Runtime's quantize_dynamic) scales
each batch's activations by its own range, which moves the shipped int8 LSTM's outputs by
up to 1% of theirs on a CPU with AVX-512 VNNI, and by 6% on one with AVX2 only (an AMD EPYC,
2026-12-07: its u8 x s8 products saturate); a first axis that is not a batch axis moves them
by their whole range."""


def _close(together: np.ndarray, alone: np.ndarray) -> bool:
    if together.dtype.kind in "OUSb" or alone.dtype.kind in "OUSb":
        return bool((together == alone).all())
    a, b = together.astype(np.float64), alone.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    finite = np.isfinite(b)
    if not np.array_equal(a[~finite], b[~finite], equal_nan=True):  # NaN where a row's mask is all 0, say
        return False
    scale = float(np.abs(b[finite]).max()) if finite.any() else 0.0
    return bool(np.abs(a[finite] - b[finite]).max(initial=0.0) <= 1e-5 + BATCH_TOLERANCE * scale)


def looks_like_probabilities(session: ort.InferenceSession, manifest: Manifest,
                             run_on: InputMaker | None = None) -> bool:
    """Whether the first output is probabilities (non-negative, each row summing to 1, as a
    final Softmax makes them) on generated inputs (or on what `run_on` makes): then softmax
    is not applied again."""
    output = manifest.outputs[0].name
    try:
        given = run_on(manifest, 4) if run_on is not None else generated_inputs(manifest, 4, seed=1)
        (scores,) = session.run([output], given)
    except Exception:  # ORT's own exception types; a model that fails here fails its warm-up too
        return False
    scores = np.asarray(scores)
    if scores.dtype.kind != "f" or scores.ndim < 1 or not scores.size:
        return False
    spec = manifest.outputs[0]
    if spec.reshape is not None:  # the classes are the last axis of what clients get
        dims = spec.item_shape(manifest.batches)
        try:
            scores = scores.reshape(len(scores), *dims) if manifest.batches else scores.reshape(dims)
        except ValueError:
            return False
    return bool((scores >= 0).all() and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3))


def disagreements(session: ort.InferenceSession, manifest: Manifest,
                  shapeless: frozenset[str] = frozenset()) -> list[str]:
    """Where a manifest's tensors and the graph it describes differ: names, datatypes,
    ranks and fixed dimensions (a -1 the graph fixes promises clients what the model
    cannot take), compared with the graph's shapes (a tensor's `reshape`, where given).
    A tensor in `shapeless` has no shape to compare: the declared one stands, and a run
    (the warm-up) is what checks it. Empty where they agree."""
    found = []
    for kind, specs, nodes in (("input", manifest.graph_inputs(), session.get_inputs()),
                               ("output", manifest.outputs, session.get_outputs())):
        graph = {node.name: node for node in nodes}
        for spec in specs:
            node = graph.get(spec.name)
            if node is None:
                found.append(f"{kind} {spec.name!r} is not in the graph, whose {kind}s are {sorted(graph)}")
                continue
            datatype = ORT_TYPES.get(node.type, node.type)
            if datatype != spec.datatype:
                found.append(f"{kind} {spec.name!r} is {datatype} in the graph, {spec.datatype} in the manifest")
            if spec.name in shapeless:
                continue
            shape = spec.graph_shape(manifest.batches)
            said = "the manifest" if spec.reshape is None else "the manifest's reshape"
            if len(node.shape) != len(shape):
                found.append(f"{kind} {spec.name!r} has rank {len(node.shape)} in the graph ({node.shape}), "
                             f"{len(shape)} in {said} ({shape})")
                continue
            for axis, (dim, declared) in enumerate(zip(node.shape, shape, strict=True)):
                if isinstance(dim, int) and dim > 0 and declared != dim:
                    found.append(f"{kind} {spec.name!r} axis {axis} is {dim} in the graph, {declared} in {said}")
        if kind == "input":
            undeclared = sorted(set(graph) - {spec.name for spec in specs})
            if undeclared:
                found.append(f"graph inputs {undeclared} are not declared in the manifest")
    outputs = {node.name for node in session.get_outputs()}
    for state in manifest.sequence.states if manifest.sequence is not None else []:
        if state.output not in outputs:
            found.append(f"state {state.input!r}: its output {state.output!r} is not in the graph, whose outputs are "
                         f"{sorted(outputs)}")
    return found
