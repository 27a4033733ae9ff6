"""KServe V2 / Open Inference Protocol types (spec names) and request/response codecs."""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from app.codecs import Codec
from app.errors import InvalidInput, UnprocessableInput, validation_errors
from app.manifest import DATATYPES, Manifest, TensorSpec
from app.protocol.binary import BinaryReader, split_body, strings_to_bytes, to_little_endian_bytes, utf8
from app.protocol.shared_memory import REGION, Place, SharedMemoryRegions, named_place
from app.protocol.values import (
    dumps_with_non_finite,
    json_object,
    positive_timeout,
    priority_level,
    sequence_flags,
)
from app.sequences import SequenceFlags

NUMPY_TO_V2 = {v: k for k, v in DATATYPES.items()}
# Keyed by the dtype itself: `dtype.name` is a Python-level property that costs a few µs,
# more than the rest of an output's entry (docs/benchmarks.md, "The V2 JSON path again").
_V2_BY_DTYPE = {np.dtype(v): k for k, v in DATATYPES.items()}
_DTYPE_OF = {k: np.dtype(v) for k, v in DATATYPES.items()}  # np.dtype(str) parses its argument each time


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name of a numpy dtype (non-native byte orders by their name)."""
    found = _V2_BY_DTYPE.get(dtype)
    return found if found is not None else NUMPY_TO_V2[dtype.name]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestInput(_Open):
    name: str
    shape: list[StrictInt]  # JSON integers: not "1", true or 1.0, which lax validation would take
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Open):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Open):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "42",
        "inputs": [{"name": "token_ids", "shape": [1, 3], "datatype": "INT64", "data": [12, 7, 30]},
                   {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [3]}],
        "outputs": [{"name": "logits"}],
    }]})


class _Sent(BaseModel):
    """What the service sends: the tests validate every response against these, strictly."""

    model_config = ConfigDict(extra="forbid")


class ResponseOutput(_Sent):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Sent):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Sent):
    name: str
    datatype: str
    shape: list[int]


class MetadataModelResponse(_Sent):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class MetadataServerResponse(_Sent):
    name: str
    version: str
    extensions: list[str]


class ErrorResponse(_Sent):
    error: str


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, BinaryReader]:
    json_part, binary = split_body(body, header_length)
    return validated_request(json_object(json_part, "with an 'inputs' list")), BinaryReader(binary)


def validated_request(raw: dict[str, Any]) -> InferenceRequest:
    """The request's JSON object (or a gRPC message's fields as one) as an InferenceRequest,
    or the same 422 for the same mistake whichever transport brought it."""
    try:
        return InferenceRequest.model_validate(raw)
    except ValidationError as e:
        raise UnprocessableInput(_describe(e)) from e


def _describe(error: ValidationError) -> str:
    return "invalid inference request: " + validation_errors(error.errors())


def decode_inputs(request: InferenceRequest, binary: BinaryReader, manifest: Manifest,
                  regions: SharedMemoryRegions | None = None) -> dict[str, np.ndarray]:
    """Named numpy arrays checked against the model's declared inputs: from the JSON data,
    the binary part, or a shared memory region (`regions`: None where the extension is off)."""
    expected = {spec.name: spec for spec in manifest.inputs}
    seen = [i.name for i in request.inputs]
    if sorted(seen) != sorted(expected):
        raise InvalidInput(f"model {manifest.name!r} takes inputs {sorted(expected)}, got {seen}")
    arrays = {}
    for item in request.inputs:
        spec = expected[item.name]
        shape = _checked_shape(item, spec, manifest.batches)
        dtype = _DTYPE_OF[spec.datatype]
        parameters = item.parameters or {}
        if REGION in parameters:
            arrays[item.name] = _from_region(item, parameters, regions, dtype, shape)
            continue
        size = parameters.get("binary_data_size")
        if size is not None:
            if item.data is not None:
                raise InvalidInput(f"input {item.name!r} has both 'data' and binary_data_size")
            if type(size) is not int or size < 0:  # not a bool either: True is no size
                raise InvalidInput(f"input {item.name!r}: binary_data_size must be an integer of bytes, 0 or "
                                   f"more; got {size!r}")
            arrays[item.name] = (binary.read_strings(item.name, size, shape) if dtype.kind == "O"
                                 else binary.read(item.name, size, dtype, shape))
        else:
            arrays[item.name] = _from_json(item, shape, dtype)
    binary.check_consumed()
    if not manifest.batches:
        # One request is one item, given to the model as sent (app/loading.py takes the axis off).
        return {name: array[np.newaxis] for name, array in arrays.items()}
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
    if rows == {0}:
        raise InvalidInput("the batch is empty: shape[0] must be at least 1")
    return arrays


def _from_region(item: RequestInput, parameters: dict[str, Any], regions: SharedMemoryRegions | None,
                 dtype: np.dtype, shape: list[int]) -> np.ndarray:
    if regions is None:
        raise InvalidInput(_no_shared_memory("input", item.name))
    if item.data is not None or "binary_data_size" in parameters:
        raise InvalidInput(f"input {item.name!r} names a shared memory region and sends data as well; "
                           "its data is in the region, or in the request, not both")
    place = named_place(parameters, "input", item.name)
    assert place is not None  # the region is named
    return regions.read_input(place, item.name, dtype, shape)


def _checked_shape(item: RequestInput, spec: TensorSpec, batches: bool) -> list[int]:
    """The shape the input's data has, checked against the model's; the request is left as sent."""
    if item.datatype != spec.datatype:
        raise InvalidInput(f"input {item.name!r} must have datatype {spec.datatype}, got {item.datatype}")
    shape = item.shape
    if shape and min(shape) < 0:  # -1 means "any" in a model's shape, never in a request's
        raise InvalidInput(f"input {item.name!r}: shape {item.shape} has a negative dimension; a request's "
                           "dimensions are the sizes it sends, 0 or more")
    if batches and spec.shape == [-1] and len(shape) == 2 and shape[1] == 1:
        # One value per item sent as [N, 1], as Triton clients do for dims [1] + reshape [].
        shape = shape[:1]
    elif not batches and spec.shape == [] and shape == [1]:
        shape = []  # a scalar sent as [1], as Triton's metadata gives it (app/protocol/triton.py)
    ok = len(shape) == len(spec.shape) and all(
        (want == -1 and got >= 0) or got == want for got, want in zip(shape, spec.shape, strict=True))
    if not ok:
        raise InvalidInput(f"input {item.name!r} must have shape {spec.shape} (-1: any), got {item.shape}")
    return shape


def _from_json(item: RequestInput, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if item.data is None:
        raise InvalidInput(f"input {item.name!r} has no 'data' (and no binary_data_size)")
    try:
        if dtype.kind == "O":
            array = _strings(item)
        elif dtype.kind in "iu":
            array = _integers(item, dtype)
        elif dtype.kind == "b":
            array = _booleans(item.data)
        else:
            array = _floats(item.data, dtype)
    except (ValueError, TypeError, OverflowError) as e:
        values = "values" if dtype.kind == "b" else "numbers"
        raise InvalidInput(f"input {item.name!r}: data is not a list of {item.datatype} {values} ({e})") from e
    needed = math.prod(shape)  # Python ints: no overflow, whatever the shape
    if array.size != needed:
        raise InvalidInput(f"input {item.name!r}: shape {item.shape} needs {needed} "
                           f"values, data has {array.size}")
    return array.reshape(shape)


_NUMBER_TYPES = (float, int)  # a JSON number as orjson reads it (not bool, whose type is its own)
_PACKED = {np.dtype(np.float32): "f", np.dtype(np.float64): "d"}
"""struct's code for a float dtype in native byte order, as np.frombuffer reads it back."""


def _floats(data: Any, dtype: np.dtype) -> np.ndarray:
    """A flat list of numbers (floats, or integers as pixel values often are) is read in one
    pass: FP32 and FP64 packed by struct (each value converted in C as numpy casts it,
    without numpy's iterator protocol: 4.4 against 10.1 µs for np.fromiter on 784 floats,
    docs/benchmarks.md), other float types by np.fromiter (a fifth less time than np.asarray,
    which first looks for nesting). Rows nested as the shape are read whole (`_nested_floats`);
    a string anywhere is refused (_TEXT); anything else as np.asarray reads it, which also
    words the error."""
    if type(data) is list and data:
        first = type(data[0])
        if first is list:
            return _nested_floats(data, dtype)
        code = _PACKED.get(dtype) if first in _NUMBER_TYPES else None
        if code is not None:
            try:  # struct takes numbers only: a string fails it
                return np.frombuffer(struct.pack(f"{len(data)}{code}", *data), dtype=dtype)
            except (struct.error, ValueError, TypeError, OverflowError):
                pass  # a list or a non-number further on: np.asarray says which
        if str in set(map(type, data)):  # numpy would read "1" as 1.0
            raise TypeError(_TEXT)
        if first in _NUMBER_TYPES and code is None:
            try:
                return np.fromiter(data, dtype=dtype, count=len(data))
            except (ValueError, TypeError, OverflowError):
                pass
    return np.asarray(data, dtype=dtype)


_TEXT = "a string among them: numbers go as JSON numbers"
"""numpy reads a string of digits as the number it spells ("1" as 1.0): a JSON string where a
number belongs is the client's mistake, and said as such."""


def _nested_floats(data: list[Any], dtype: np.dtype) -> np.ndarray:
    """Rows of numbers (nested as the shape), converted once: numpy makes the whole array text
    where any value is a string, which is how one is found without a walk through the rows.
    Each value ends up as numpy's direct conversion makes it: a Python int by way of a double,
    as a float is (an int64 array cast straight to FP32 would round some large ints once
    instead of twice, and differ from the same values sent flat)."""
    array = np.asarray(data)
    kind = array.dtype.kind
    if kind in "US" or (kind == "O" and any(type(v) is str for v in array.flat)):
        raise TypeError(_TEXT)
    if kind == "O":  # a null among them, or an integer past 64 bits: numpy converts each itself
        return np.asarray(data, dtype=dtype)
    return (array if kind == "f" else array.astype(np.float64)).astype(dtype)


def _booleans(data: Any) -> np.ndarray:
    """BOOL data in JSON: true and false, nested as the shape or flat. numpy would read
    anything else as one of them ("false" and 0.5 both as True)."""
    array = np.asarray(data)
    if array.size and array.dtype.kind != "b":
        raise TypeError("BOOL values go as JSON true or false")
    return array.astype(np.bool_)


def _strings(item: RequestInput) -> np.ndarray:
    """BYTES data in JSON: strings (nested as the shape, or flat)."""
    flat = np.asarray(item.data, dtype=object).ravel()
    if not all(type(v) is str for v in flat):
        raise InvalidInput(f"input {item.name!r} has datatype BYTES: its data must be strings")
    return flat


def _integers(item: RequestInput, dtype: np.dtype) -> np.ndarray:
    """JSON numbers for an integer tensor: whole numbers in the type's range, else a 400.
    numpy's own conversion would cut 1.9 to 1 and wrap 300 into an INT8 silently."""
    array = np.asarray(item.data)  # ints stay exact (int64), any fraction makes it float64
    if array.dtype == dtype:
        return array
    kind = array.dtype.kind
    if kind not in "iubf":  # strings, lists of uneven length, integers beyond 64 bits
        raise InvalidInput(f"input {item.name!r}: data is not a list of {item.datatype} numbers")
    if kind == "f":
        whole = np.isfinite(array) & (array == np.trunc(array))
        if not whole.all():
            raise InvalidInput(f"input {item.name!r} has datatype {item.datatype}: "
                               f"{array[~whole].flat[0].item()!r} is not a whole number")
    if array.size and kind != "b":
        info = np.iinfo(dtype)
        low, high = array.min().item(), array.max().item()  # Python numbers: compared exactly
        if low < info.min or high > info.max:
            raise InvalidInput(f"input {item.name!r}: values must lie in {info.min}..{info.max} for "
                               f"{item.datatype}, got {low if low < info.min else high}")
    return array.astype(dtype)


def classification_of(request: InferenceRequest, name: str) -> int | None:
    """Triton's classification extension: `parameters.classification: k` on an output asks
    for its k highest scores as "score:index:label" strings instead of the scores."""
    for out in request.outputs or []:
        if out.name == name and out.parameters and "classification" in out.parameters:
            return out.parameters["classification"]
    return None


def wants_binary(request: InferenceRequest, name: str) -> bool:
    for out in request.outputs or []:
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def _check_flag(parameters: dict[str, Any] | None, name: str, what: str) -> None:
    """A yes-or-no parameter is JSON true or false: read as Python reads truth, "false" and
    0.5 would both mean yes."""
    value = (parameters or {}).get(name)
    if value is not None and type(value) is not bool:
        raise InvalidInput(f"{what} must be true or false, got {value!r}")


def _no_shared_memory(kind: str, name: str) -> str:
    # Served anyway, an input would be read from the request and an output left unwritten in
    # a region the client then reads: refused, and said why.
    return (f"{kind} {name!r} names a shared memory region: Triton's system shared-memory extension is off in "
            "this server (it is on with --shared-memory, for clients on the same host); send the tensor in the "
            "request and read it from the answer")


def output_place(request: InferenceRequest, name: str) -> Place | None:
    """The shared memory region an output is to be written to (None: in the answer)."""
    for out in request.outputs or []:
        if out.name == name and out.parameters and REGION in out.parameters:
            return named_place(out.parameters, "output", name)
    return None


def check_requested_outputs(request: InferenceRequest, manifest: Manifest,
                            regions: SharedMemoryRegions | None = None) -> None:
    _check_flag(request.parameters, "binary_data_output", "parameters.binary_data_output")
    if not request.outputs:
        return  # every output, unclassified: nothing to check
    for out in request.outputs:
        if out.parameters:
            if REGION in out.parameters:
                if regions is None:
                    raise InvalidInput(_no_shared_memory("output", out.name))
                place = named_place(out.parameters, "output", out.name)
                assert place is not None  # the region is named
                regions.check_output(place, out.name)
            _check_flag(out.parameters, "binary_data", f"output {out.name!r}: parameters.binary_data")
    known = [o.name for o in manifest.outputs]
    asked = [o.name for o in request.outputs or []]
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise InvalidInput(f"model {manifest.name!r} has no outputs {unknown}; it has {known}")
    repeated = sorted(name for name, count in Counter(asked).items() if count > 1)
    if repeated:  # each repeat would be encoded again: a small request asking for a huge answer
        raise InvalidInput(f"outputs {repeated} are requested more than once; name each output at most once")
    specs = {o.name: o for o in manifest.outputs}
    for name in asked:
        k = classification_of(request, name)
        if k is None:
            continue
        spec = specs[name]
        classes = spec.shape[-1] if spec.shape else 0
        if type(k) is not int or k < 1:
            raise InvalidInput(f"output {name!r}: parameters.classification must be a whole number of classes, "
                               f"at least 1; got {k!r}")
        if spec.datatype == "BYTES" or len(spec.item_shape(manifest.batches)) != 1 or classes == 0:
            raise InvalidInput(f"output {name!r} of shape {spec.shape} is not one score per class: "
                               "it cannot be classified")
        if classes != -1 and k > classes:
            raise InvalidInput(f"output {name!r}: parameters.classification {k} is more than its {classes} classes")


# Upper bounds of one element's bytes in a JSON response ("-1.2345678901234567e-308," and the
# like), by numpy kind and size: for bounding a response before it is computed.
_JSON_ELEMENT_BYTES: dict[str, dict[int, int]] = {
    "f": {2: 25, 4: 25, 8: 25}, "b": {1: 6}, "i": {1: 5, 2: 7, 4: 12, 8: 21}, "u": {1: 4, 2: 6, 4: 11, 8: 21}}
_ENTRY_BYTES = 256  # an output's name, datatype, shape and punctuation


def _element_bytes(dtype: np.dtype, binary: bool) -> int:
    if binary:
        return dtype.itemsize
    return _JSON_ELEMENT_BYTES[dtype.kind][dtype.itemsize]


def answered_outputs(request: InferenceRequest, manifest: Manifest) -> list[str]:
    """The outputs the answer holds: those the request names, else every output of the model."""
    return [o.name for o in request.outputs] if request.outputs else [o.name for o in manifest.outputs]


def response_bytes(request: InferenceRequest, manifest: Manifest, rows: int,
                   outputs: dict[str, np.ndarray] | None = None, regions: bool = False) -> int:
    """The most bytes the answer to `request` takes for `rows` rows: from the outputs' declared
    shapes before they are computed (a dynamic axis other than the batch axis counts once
    there), exactly from the computed `outputs` once they are. `regions`: whether outputs may
    be written to shared memory (the extension on), where they count as binary ones."""
    specs = {spec.name: spec for spec in manifest.outputs}
    total = _ENTRY_BYTES
    for name in answered_outputs(request, manifest):
        # an output written to its region counts as in the answer: the server holds its bytes alike
        binary = wants_binary(request, name) or (regions and request.outputs is not None
                                                 and output_place(request, name) is not None)
        k = classification_of(request, name) if request.outputs else None
        if k is not None:  # "score:index:label": a float, an index, the longest label escaped
            longest_label = max((len(label.encode()) for label in manifest.labels), default=0)
            total += _ENTRY_BYTES + rows * k * (25 + 21 + 6 * longest_label + 6)
            continue
        if outputs is None:
            spec = specs[name]
            dtype = _DTYPE_OF[spec.datatype]
            elements = rows * math.prod(max(d, 1) for d in spec.item_shape(manifest.batches))
            per_element = _STRING_GUESS if dtype.kind == "O" else _element_bytes(dtype, binary)
            total += _ENTRY_BYTES + elements * per_element
        elif outputs[name].dtype.kind == "O":
            total += _ENTRY_BYTES + sum(_string_bytes(v, binary) for v in outputs[name].flat)
        else:
            total += _ENTRY_BYTES + outputs[name].size * _element_bytes(outputs[name].dtype, binary)
    return total


_STRING_GUESS = 16
"""A string output element's bytes before it is computed: a guess, checked exactly after."""


def _string_bytes(value: object, binary: bool) -> int:
    size = len(utf8(value))
    return 4 + size if binary else 6 * size + 3  # binary: its length prefix; JSON: worst-case escapes



def encode_response(request: InferenceRequest, manifest: Manifest, outputs: dict[str, np.ndarray],
                    regions: SharedMemoryRegions | None = None) -> tuple[bytes, int | None]:
    """(body, JSON header length if any output is binary, else None). Outputs asked for in
    shared memory are written to their regions, and answered by name, type and shape alone
    (no parameters either: Triton's C++ client reads `binary_data_size` in any it finds)."""
    entries, blobs = [], []
    for name, array in answered_arrays(request, manifest, outputs):
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        place = output_place(request, name) if regions is not None and request.outputs else None
        if place is not None and regions is not None:
            write_to_region(regions, place, name, array)
        elif wants_binary(request, name):
            blob = strings_to_bytes(array) if array.dtype.kind == "O" else to_little_endian_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype.kind == "O":
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.flat]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": manifest.name, "model_version": str(manifest.version)}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = orjson.dumps(response)
    if b"null" in header:  # from a NaN or an infinity (or text that says null: encoded alike again)
        header = dumps_with_non_finite(response)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def write_to_region(regions: SharedMemoryRegions, place: Place, name: str, array: np.ndarray) -> None:
    """An output written to its shared memory region, its bytes as a binary output's."""
    regions.write_output(place, name, strings_to_bytes(array) if array.dtype.kind == "O"
                         else to_little_endian_bytes(array))


def answered_arrays(request: InferenceRequest, manifest: Manifest, outputs: dict[str, np.ndarray]
                    ) -> list[tuple[str, np.ndarray]]:
    """The answer's tensors, by name, as they are sent: a model that does not batch as it
    gave them (no batch axis), classified where the request asks for it."""
    answered, first = [], manifest.outputs[0].name
    for name in answered_outputs(request, manifest):
        array = outputs[name] if manifest.batches else outputs[name][0, ...]
        k = classification_of(request, name) if request.outputs else None
        if k is not None:
            array = classified(array, k, manifest.labels if name == first else [])
        answered.append((name, array))
    return answered


def classified(scores: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """The k highest scores of each row as Triton writes them: "score:index:label" (or
    "score:index" without labels), highest first, the score with six decimals."""
    k = min(k, scores.shape[-1])
    top = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    values = np.take_along_axis(scores, top, axis=-1)
    text = [f"{v:f}:{i}:{labels[i]}" if i < len(labels) else f"{v:f}:{i}"
            for v, i in zip(values.ravel().tolist(), top.ravel().tolist(), strict=True)]
    return np.array(text, dtype=object).reshape(top.shape)


class V2Exchange:
    """One V2 request (JSON, or Triton's binary tensors) through the inference path
    (app/inference.py `Exchange`). The request is kept for its answer (the outputs asked
    for, binary or not, its id) without its input data."""

    __slots__ = ("binary_header", "regions")

    def __init__(self, binary_header: str | None, regions: SharedMemoryRegions | None = None) -> None:
        self.binary_header = binary_header  # Inference-Header-Content-Length: a binary body's JSON part
        self.regions = regions  # Triton's system shared memory (None: the extension is off)

    def parse(self, body: bytes) -> tuple[InferenceRequest, BinaryReader]:
        return parse_request(body, self.binary_header)

    def heavy(self, parsed: tuple[InferenceRequest, BinaryReader], codec: Codec) -> bool:
        """Tensors are bounded by the body, so a small body decodes quickly, but for those read
        from shared memory: as many of their bytes as a large body's are read off the loop."""
        return self.regions is not None and self.regions.heavy([item.parameters for item in parsed[0].inputs])

    def decode(self, parsed: tuple[InferenceRequest, BinaryReader], manifest: Manifest, codec: Codec
               ) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
        """The request checked whole against the model: nothing bad reaches its batch."""
        request, binary = parsed
        codec.check_shapes({item.name: item.shape for item in request.inputs})
        inputs = decode_inputs(request, binary, manifest, self.regions)
        codec.check_tensors(inputs)  # raw tensors: check what the model needs beyond shape
        check_requested_outputs(request, manifest, self.regions)
        for item in request.inputs:
            item.data = None  # the JSON lists go now; the answer needs none of them
        return request, inputs

    def timeout_s(self, request: InferenceRequest) -> float | None:
        requested = (request.parameters or {}).get("timeout")
        return None if requested is None else positive_timeout(requested, "parameters.timeout (µs)", 1e-6)

    def priority(self, request: InferenceRequest) -> int:
        asked = (request.parameters or {}).get("priority")
        return 0 if asked is None else priority_level(asked)

    def sequence(self, request: InferenceRequest) -> SequenceFlags | None:
        return sequence_flags(request.parameters or {})

    def answer_bytes(self, request: InferenceRequest, manifest: Manifest, rows: int,
                     outputs: dict[str, np.ndarray] | None = None) -> int:
        return response_bytes(request, manifest, rows, outputs, self.regions is not None)

    def answer(self, request: InferenceRequest, manifest: Manifest, outputs: dict[str, np.ndarray]
               ) -> tuple[bytes, int | None]:
        return encode_response(request, manifest, outputs, self.regions)
