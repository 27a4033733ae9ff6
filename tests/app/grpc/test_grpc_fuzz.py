"""ModelInfer with generated messages against a real server (hypothesis): whatever a client
sends, the answer is a result or a client's error code with a message, never INTERNAL or
UNKNOWN (a server fault) and never a hang; and the server answers a good request after
every bad one. The gRPC twin of tests/app/http/test_fuzz.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from app.manifest import DATATYPES
from app.protocol.v2_grpc import TYPED_CONTENTS
from load_tests.server import ServerProcess
from tests.conftest import MODELS

CALL_S = 30.0
"""A call that takes this long has hung: a failure, however busy the machine."""

SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

_NAMES = st.sampled_from(["pixels", "token_ids", "lengths", "x", "", "é" * 3])
_DATATYPES = st.one_of(st.sampled_from(["FP32", "INT64", "BYTES", "BOOL"]), st.sampled_from([*DATATYPES, "X", "", "fp32"]))
_DIMS = st.lists(st.one_of(st.integers(-2, 40), st.sampled_from([28, 784, 2**31, 2**62])), max_size=5)
_TYPED = {
    "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(), "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1), "bool_contents": st.booleans(), "bytes_contents": st.binary(max_size=8),
}


@st.composite
def infer_requests(draw: Any) -> pb.ModelInferRequest:
    # mostly a model and version that are served, so that most messages reach their decoding
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(["fashion-cnn", "sst2-lstm"] * 4 + ["nope", ""])),
                                   model_version=draw(st.sampled_from([""] * 6 + ["1", "2", "3", "x", "-1"])),
                                   id=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(_NAMES), datatype=draw(_DATATYPES), shape=draw(_DIMS))
        if raw:
            size = draw(st.sampled_from([0, 1, 3, 4, 8, 16, 3136, 6272]))
            request.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        elif draw(st.booleans()):  # mostly the datatype's own field, else any
            field = TYPED_CONTENTS.get(tensor.datatype) or draw(st.sampled_from(sorted(_TYPED)))
            if draw(st.integers(0, 3)) == 0:
                field = draw(st.sampled_from(sorted(_TYPED)))
            getattr(tensor.contents, field).extend(draw(st.lists(_TYPED[field], max_size=20)))
        if draw(st.booleans()):
            tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 10_000))
    if raw and draw(st.booleans()):  # one tensor more or fewer than the inputs
        request.raw_input_contents.append(b"\0" * 4)
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=draw(st.sampled_from(["logits", "x", ""])))
        choice = draw(st.sampled_from(["none", "k", "k_text", "binary"]))
        if choice == "k":
            output.parameters["classification"].int64_param = draw(st.integers(-2, 20))
        elif choice == "k_text":
            output.parameters["classification"].string_param = "3"
        elif choice == "binary":
            output.parameters["binary_data"].bool_param = draw(st.booleans())
    timeout = draw(st.sampled_from([None, -1, 0, 1, 10**6, "soon"]))
    if isinstance(timeout, int):
        request.parameters["timeout"].int64_param = timeout
    elif timeout is not None:
        request.parameters["timeout"].string_param = timeout
    return request


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "1"]) as running:
        with grpc.insecure_channel(running.grpc_target) as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)


def _good() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[np.zeros(784, "<f4").tobytes()])
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(request=infer_requests())
def test_any_message_is_answered_or_refused_as_the_clients_mistake(stub: pb_grpc.GRPCInferenceServiceStub,
                                                                   request: pb.ModelInferRequest) -> None:
    asked_s = request.parameters["timeout"].int64_param / 1e6 if "timeout" in request.parameters else None
    refused = _refusal(stub, request)
    if refused is not None:
        code, details = refused
        assert code not in SERVER_FAULTS, (code, details, request)
        assert details, (code, request)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # The server's answer to the request's own timeout, naming it; the client's
            # deadline (a hang) says "Deadline Exceeded" and names none.
            assert asked_s is not None, (details, request)
            assert f"{asked_s:g} s" in details, (details, request)
    assert list(stub.ModelInfer(_good(), timeout=CALL_S).outputs[0].shape) == [1, 10]


def _refusal(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> tuple[Any, str] | None:
    """(code, details) of a refused call; None for an answer."""
    try:
        stub.ModelInfer(request, timeout=CALL_S)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(requests=st.lists(infer_requests(), min_size=1, max_size=5))
def test_a_stream_answers_every_message_with_a_result_or_its_error(stub: pb_grpc.GRPCInferenceServiceStub,
                                                                   requests: list[pb.ModelInferRequest]) -> None:
    """On a stream each message's mistake is its own answer (error_message), and the stream
    goes on: as many answers as messages, then the good one last."""
    for n, request in enumerate(requests):
        request.id = f"m{n}"
    sent = [*requests, _good()]
    sent[-1].id = "good"
    answers = list(stub.ModelStreamInfer(iter(sent), timeout=CALL_S))
    assert len(answers) == len(sent)
    good = [a for a in answers if a.infer_response.id == "good"]
    assert len(good) == 1
    assert not good[0].error_message
    assert list(good[0].infer_response.outputs[0].shape) == [1, 10]
    for answer in answers:
        assert answer.error_message or answer.infer_response.outputs, answer
        assert "internal server error" not in answer.error_message, answer
