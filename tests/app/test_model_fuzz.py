"""Requests made from each served model's own metadata, near it and off it (other shapes,
datatypes, values: NaN, numbers past a type's range, strings, nulls, nesting; inputs left out
or added; binary outputs and classification asked for), against a real server holding the
kinds of graph a user brings. Whatever is sent, the answer is below 500, and a 4xx says
what is wrong: schemathesis (tests/app/http/test_fuzz.py) keeps to the OpenAPI document,
which cannot know a model's tensors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.http import InferenceServerClient

from app.manifest import DATATYPES
from app.protocol.binary import strings_to_bytes
from app.protocol.v2_grpc import TYPED_CONTENTS
from load_tests.sequences import ACCUMULATOR_CONFIG, accumulator
from load_tests.server import ServerProcess
from tests.app import onnx_models as models

pytestmark = pytest.mark.server

GRAPHS = {
    "mlp": models.mlp(), "squared": models.squared(), "top-k": models.top_k(), "parsed": models.parsed_numbers(),
    "flattened": models.flattened(), "widened": models.widened(), "embedding": models.embedding(),
    "masking": models.two_in_two_out(), "lstm": models.lstm(), "typed": models.half_and_bytes(),
    "averaged": models.averaged_over_a_sequence(), "centred": models.centred_over_the_batch(),
}
RESHAPED = {
    # Triton's reshape: clients' dims the graph's otherwise (its quickstart model's, and steps sent flat)
    "pooled": (models.pooled(1), 'max_batch_size: 0\n'
               'input [ { name: "data_0" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] reshape { shape: [ 1, 3, 8, 8 ] } } ]\n'
               'output [ { name: "fc6_1" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 1, 4, 1, 1 ] } } ]\n'),
    "stepped": (models.lstm(), 'max_batch_size: 4\n'
                'input [ { name: "steps" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 3 ] } } ]\n'
                'output [ { name: "last" data_type: TYPE_FP32 dims: [ 1, 5 ] } ]\n'),
}
PRIORITISED = {  # Triton's priority levels: a request's priority parameter, in range or not; three
    # instances, so that batches of it run at once
    "ranked": (models.mlp(), 'max_batch_size: 8\ndynamic_batching { priority_levels: 3 default_priority_level: 2 }\n'
               'instance_group [ { count: 3 kind: KIND_CPU } ]\n'),
}
SEQUENCED = {  # Triton's sequence batching: any sequence parameters, any order of them
    "accumulator": (accumulator(), ACCUMULATOR_CONFIG),
}
ENSEMBLES = {
    # ids -> the table's rows (a batching step, which refuses ids past its table) -> centred over
    # the request's rows (a step that does not batch: the ensemble's whole tensor is its item)
    "embed-centre": 'platform: "ensemble"\nmax_batch_size: 8\n'
                    'input [ { name: "ids" data_type: TYPE_INT64 dims: [ 1 ] reshape { shape: [ ] } } ]\n'
                    'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
                    'ensemble_scheduling { step [\n'
                    '  { model_name: "embedding" input_map { key: "ids" value: "ids" } '
                    'output_map { key: "vectors" value: "vectors" } },\n'
                    '  { model_name: "centred" input_map { key: "x" value: "vectors" } '
                    'output_map { key: "y" value: "y" } } ] }\n',
}
DATATYPE_NAMES = list(DATATYPES)  # V2's, as the server reads them


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("own-models")
    for name, graph in GRAPHS.items():
        models.save(root, name, graph)
    models.save(root, "yes-or-no", models.yes_or_no(), opset=19)  # its string ops need opset 19
    for name, (graph, config) in (RESHAPED | PRIORITISED | SEQUENCED).items():
        models.save(root, name, graph)
        (root / name / "config.pbtxt").write_text(config)
    for name, config in ENSEMBLES.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
    with ServerProcess(["--model-dir", str(root), "--workers", "1"]) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, {name: client.get(f"/v2/models/{name}").json()
                       for name in [*GRAPHS, "yes-or-no", *RESHAPED, *PRIORITISED, *SEQUENCED, *ENSEMBLES]}


_ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(), st.integers(-(2**70), 2**70),
                 st.just(float("nan")), st.just(math.inf), st.lists(st.integers(0, 3), max_size=2))


def _value(datatype: str, clean: bool) -> st.SearchStrategy[Any]:
    near = {"BOOL": st.booleans(), "BYTES": st.text(max_size=6)}.get(datatype)
    if near is None:
        near = st.integers(-3, 12) if datatype.startswith(("INT", "UINT")) else st.floats(-1e3, 1e3)
    return near if clean else st.one_of(near, near, near, _ODD)


@st.composite
def _tensor(draw: st.DrawFn, spec: dict[str, Any], clean: bool) -> dict[str, Any]:
    """One input: its shape with each dynamic axis given a small size (or another shape),
    its datatype (or another), that many values (or not), flat or nested. `clean`: as
    declared, with values of its type (which a model may still refuse: an id past a table)."""
    odd = (lambda: False) if clean else (lambda: draw(st.integers(0, 9)) == 0)
    if odd():
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
    else:
        shape = [draw(st.integers(1 if clean else 0, 4)) if d == -1 else d for d in spec["shape"]]
    datatype = draw(st.sampled_from(DATATYPE_NAMES)) if odd() else spec["datatype"]
    count = draw(st.integers(0, 6)) if odd() else math.prod(shape)
    data: Any = draw(st.lists(_value(datatype, clean), min_size=count, max_size=count))
    if len(shape) > 1 and shape[0] and count == math.prod(shape) and draw(st.booleans()):
        width = count // shape[0]
        data = [data[i * width:(i + 1) * width] for i in range(shape[0])]  # rows, as some clients send
    tensor = {"name": spec["name"], "shape": shape, "datatype": datatype, "data": data}
    if not clean and draw(st.integers(0, 19)) == 0:
        tensor["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_size", "shared_memory_region"]),
                                                    _ODD, max_size=1))
    return tensor


@st.composite
def _request(draw: st.DrawFn, metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(metadata)))
    clean = draw(st.booleans())
    inputs = [draw(_tensor(spec, clean)) for spec in metadata[name]["inputs"]]
    if not clean and inputs and draw(st.integers(0, 9)) == 0:
        inputs.pop(draw(st.integers(0, len(inputs) - 1)))  # one left out
    if not clean and draw(st.integers(0, 19)) == 0:
        inputs.append(draw(_tensor({"name": "extra", "shape": [1], "datatype": "FP32"}, clean)))
    body: dict[str, Any] = {"inputs": inputs}
    parameters = {}
    if draw(st.integers(0, 3)) == 0:  # Triton's schedule policy (its timeout would be a 504, not fuzzed)
        parameters["priority"] = draw(st.integers(0, 4) | _ODD)
    if draw(st.integers(0, 2)) == 0 or name in SEQUENCED:  # a sequence's step, any model
        parameters |= draw(st.fixed_dictionaries({}, optional={
            "sequence_id": st.integers(0, 3) | _ODD, "sequence_start": st.booleans() | _ODD,
            "sequence_end": st.booleans() | _ODD}))
    if parameters:
        body["parameters"] = parameters
    if draw(st.integers(0, 4)) == 0:
        outputs = [o["name"] for o in metadata[name]["outputs"]] + ["no-such-output"]
        body["outputs"] = [{"name": draw(st.sampled_from(outputs)), "parameters": draw(st.dictionaries(
            st.sampled_from(["binary_data", "classification"]), st.booleans() | st.integers(-1, 3) | _ODD,
            max_size=2))}]
    return name, body


def _json(body: dict[str, Any]) -> bytes:
    """As Python's json writes it: NaN and the infinities as Triton's clients send them."""
    return json.dumps(body).encode()


def test_any_request_made_from_a_models_metadata_is_answered_below_500(
        served: tuple[ServerProcess, dict[str, Any]]) -> None:
    server, metadata = served
    assert all("inputs" in m for m in metadata.values()), metadata  # every graph served

    with httpx.Client(base_url=server.url, timeout=60) as client:
        @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=_request(metadata))
        def check(request: tuple[str, dict[str, Any]]) -> None:
            name, body = request
            answer = client.post(f"/v2/models/{name}/infer", content=_json(body),
                                 headers={"Content-Type": "application/json"})
            assert answer.status_code < 500, (name, body, answer.status_code, answer.text[:300])
            if answer.status_code >= 400:
                assert answer.json()["error"], (name, body)

        check()
        # and the models still answer after all of it: no breaker opened by clients' mistakes
        for name in metadata:
            assert client.get(f"/v2/models/{name}/ready").status_code == 200, name


def _close(a: Any, b: Any) -> bool:
    """Outputs alike: numbers within a float32's rounding of batching, NaN as NaN, the rest equal."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    return bool(a == b)


def _outputs(answer: httpx.Response) -> list[Any]:
    """An answer's outputs, each [name, datatype, shape, values], as tritonclient reads them
    (JSON, or Triton's binary tensors after a JSON header)."""
    length = answer.headers.get("inference-header-content-length")
    result = InferenceServerClient.parse_response_body(answer.content,
                                                       header_length=int(length) if length is not None else None)
    return [[o["name"], o["datatype"], o["shape"], result.as_numpy(o["name"]).tolist()]
            for o in result.get_response()["outputs"]]


def test_requests_batched_together_are_answered_as_each_is_alone(
        served: tuple[ServerProcess, dict[str, Any]]) -> None:
    """Eight requests for one model at once, good and bad mixed, so that they share batches
    (a bad one makes its batch run a request at a time): each answer below 500, and each
    200 the same as that request answers when sent alone."""
    server, metadata = served

    with httpx.Client(base_url=server.url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        def send(request: tuple[str, dict[str, Any]]) -> httpx.Response:
            name, body = request
            return client.post(f"/v2/models/{name}/infer", content=_json(body), headers={"Content-Type": "application/json"})

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        # a stateful model's answer depends on the requests before it: not one to send twice
        @given(name=st.sampled_from(sorted(set(metadata) - set(SEQUENCED))), data=st.data())
        def check(name: str, data: st.DataObject) -> None:
            requests = data.draw(st.lists(_request({name: metadata[name]}), min_size=8, max_size=8))
            together = list(pool.map(send, requests))
            for request, answer in zip(requests, together, strict=True):
                assert answer.status_code < 500, (request, answer.status_code, answer.text[:300])
                if answer.status_code == 200:
                    alone = send(request)
                    assert alone.status_code == 200, (request, alone.text[:300])
                    assert _close(_outputs(answer), _outputs(alone)), request

        check()


@st.composite
def _grpc_request(draw: st.DrawFn, metadata: dict[str, Any]) -> pb.ModelInferRequest:
    """A ModelInfer message from a model's metadata: its tensors' bytes at the declared
    size (any bit pattern: NaN, infinities, ids past a table), at another size, or typed
    contents of the datatype's own field."""
    name = draw(st.sampled_from(sorted(metadata)))
    request = pb.ModelInferRequest(model_name=name)
    for parameter in ("priority", "sequence_id", "sequence_start", "sequence_end"):
        if draw(st.integers(0, 3)) == 0:
            which = draw(st.sampled_from(["int64_param", "uint64_param", "string_param", "bool_param"]))
            value = {"string_param": st.text(max_size=3), "bool_param": st.booleans(),
                     "uint64_param": st.integers(0, 2**64 - 1)}.get(which, st.integers(-(2**63), 2**63 - 1))
            setattr(request.parameters[parameter], which, draw(value))
    raw = draw(st.booleans())
    for spec in metadata[name]["inputs"]:
        shape = [draw(st.integers(0, 3)) if d == -1 else d for d in spec["shape"]]
        datatype = spec["datatype"] if draw(st.integers(0, 9)) else draw(st.sampled_from(DATATYPE_NAMES))
        tensor = request.inputs.add(name=spec["name"], datatype=datatype, shape=shape)
        count = math.prod(shape) if draw(st.integers(0, 4)) else draw(st.integers(0, 5))
        if datatype == "BYTES":
            strings = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
            if raw:
                request.raw_input_contents.append(strings_to_bytes(np.array(strings, dtype=object)))
            else:
                tensor.contents.bytes_contents.extend(strings)
        elif raw or datatype not in TYPED_CONTENTS:  # FP16 has no typed field: raw bytes only
            size = count * np.dtype(DATATYPES[datatype]).itemsize
            request.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        else:
            values = np.frombuffer(draw(st.binary(min_size=count * 8, max_size=count * 8)), np.int64)
            field = TYPED_CONTENTS[datatype]
            dtype = np.dtype(DATATYPES[datatype])  # typed contents carry the datatype's values, floats any bits
            with np.errstate(all="ignore"):
                typed = (values.view(np.float64) if dtype.kind == "f" else values).astype(dtype)
            getattr(tensor.contents, field).extend(typed.tolist())
    return request


def _refusal(stub: Any, request: Any) -> tuple[Any, str] | None:
    """(status code, details) of a refused call; None where it was answered."""
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return None


def test_any_grpc_call_made_from_a_models_metadata_is_no_server_fault(
        served: tuple[ServerProcess, dict[str, Any]]) -> None:
    """The same over gRPC: a result or a client's error code, never INTERNAL or UNKNOWN."""
    server, metadata = served
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=_grpc_request(metadata))
        def check(request: Any) -> None:
            refused = _refusal(stub, request)
            if refused is not None:
                code, details = refused
                assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (request, details)
                assert details, request

        check()
        for name in metadata:
            assert stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=30).ready, name


def test_any_binary_tensor_request_made_from_a_models_metadata_is_answered_below_500(
        served: tuple[ServerProcess, dict[str, Any]]) -> None:
    """The same tensors' bytes as Triton's binary extension over HTTP: a JSON header of
    Inference-Header-Content-Length bytes, then the tensors."""
    server, metadata = served
    with httpx.Client(base_url=server.url, timeout=60) as client:
        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=_grpc_request(metadata), cut=st.integers(-2, 2))
        def check(request: Any, cut: int) -> None:
            assume(len(request.raw_input_contents) == len(request.inputs))  # raw bytes, not typed contents
            header = _json({"inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                 "parameters": {"binary_data_size": len(raw) + (cut if i == 0 else 0)}}
                for i, (t, raw) in enumerate(zip(request.inputs, request.raw_input_contents, strict=True))]})
            answer = client.post(f"/v2/models/{request.model_name}/infer",
                                 content=header + b"".join(request.raw_input_contents),
                                 headers={"Inference-Header-Content-Length": str(len(header)),
                                          "Content-Type": "application/octet-stream"})
            assert answer.status_code < 500, (request, answer.status_code, answer.text[:300])
            if answer.status_code >= 400:
                assert answer.json()["error"], request

        check()
