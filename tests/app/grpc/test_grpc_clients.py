"""The gRPC service against a real `python -m app`, through Triton's own clients: every
call, answers identical to HTTP binary's, and the same error text under gRPC's codes."""

from __future__ import annotations

import asyncio
import queue
import signal
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from app.preprocess import Tokenizer, normalize_pixels
from load_tests import perf_analyzer, perf_inputs
from load_tests.server import ServerProcess
from tests.app.conftest import sample_images
from tests.app.test_server import wait_queued
from tests.conftest import MODELS, model_folder

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(["--model-dir", str(MODELS)]) as running:
        yield running


def clients(server: ServerProcess) -> tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient]:
    return (triton_http.InferenceServerClient(f"127.0.0.1:{server.port}"),
            triton_grpc.InferenceServerClient(server.grpc_target))


def pixels(n: int, seed: int = 3) -> np.ndarray:
    return normalize_pixels(sample_images(n, seed=seed), _manifest("fashion-cnn").preprocessing)  # type: ignore[arg-type]


def _manifest(name: str):  # type: ignore[no-untyped-def]
    from app.manifest import load_manifest

    return load_manifest(model_folder(name))


def token_inputs(texts: list[str]) -> dict[str, np.ndarray]:
    folder, manifest = model_folder("sst2-lstm"), _manifest("sst2-lstm")
    tokenizer = Tokenizer.from_file(folder / manifest.preprocessing.vocabulary_file, manifest.preprocessing)
    encoded = [tokenizer.encode(t) for t in texts]
    width = max(len(ids) for ids in encoded)
    ids = np.zeros((len(texts), width), np.int64)
    for row, values in enumerate(encoded):
        ids[row, : len(values)] = values
    return {"token_ids": ids, "lengths": np.array([len(v) for v in encoded], np.int64)}


def inputs_for(module, tensors: dict[str, np.ndarray], **options) -> list:  # type: ignore[no-untyped-def]
    made = []
    for name, array in tensors.items():
        tensor = module.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        tensor.set_data_from_numpy(array, **options)
        made.append(tensor)
    return made


MODEL_INPUTS = {"fashion-cnn": lambda: {"pixels": pixels(5)},
                "sst2-lstm": lambda: token_inputs(["a gripping , beautifully acted film .", "dull", "ça marche"])}


def test_health_metadata_config_and_statistics_match_http(server: ServerProcess) -> None:
    http, grpc_client = clients(server)
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("fashion-cnn")
    assert grpc_client.is_model_ready("sst2-lstm", model_folder("sst2-lstm").name)
    assert not grpc_client.is_model_ready("missing")  # as Triton answers: a no, not an error
    assert json_format.MessageToDict(grpc_client.get_server_metadata()) == http.get_server_metadata()
    for name in ("fashion-cnn", "sst2-lstm"):
        over_http = http.get_model_metadata(name)
        over_http.pop("parameters")  # the gRPC message has no field for them
        assert grpc_client.get_model_metadata(name, as_json=True) == _int_shapes(over_http)
        config = grpc_client.get_model_config(name, as_json=True)["config"]
        assert config["max_batch_size"] == http.get_model_config(name)["max_batch_size"] > 0
        # Field for field HTTP's configuration, as protobuf's JSON writes it (int64 as strings).
        as_message = json_format.ParseDict(http.get_model_config(name), model_config_pb2.ModelConfig())
        assert config == json_format.MessageToDict(as_message, preserving_proto_field_name=True)
    grpc_client.infer("fashion-cnn", inputs_for(triton_grpc, {"pixels": pixels(2)}))
    stats = grpc_client.get_inference_statistics("fashion-cnn", as_json=True)["model_stats"]
    assert [s["name"] for s in stats] == ["fashion-cnn"]
    assert int(stats[0]["inference_count"]) >= 2
    everything = grpc_client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} == {"fashion-cnn", "sst2-lstm"}


def _int_shapes(metadata: dict) -> dict:
    """protobuf's JSON writes int64 as strings; the HTTP metadata has numbers."""
    for tensor in metadata["inputs"] + metadata["outputs"]:
        tensor["shape"] = [str(d) for d in tensor["shape"]]
    return metadata


@pytest.mark.parametrize("name", ["fashion-cnn", "sst2-lstm"])
def test_the_same_request_over_http_binary_and_grpc_gives_identical_outputs(server: ServerProcess, name: str) -> None:
    http, grpc_client = clients(server)
    tensors = MODEL_INPUTS[name]()
    output = _manifest(name).outputs[0].name
    over_http = http.infer(name, inputs_for(triton_http, tensors, binary_data=True),
                           outputs=[triton_http.InferRequestedOutput(output, binary_data=True)])
    over_grpc = grpc_client.infer(name, inputs_for(triton_grpc, tensors), request_id="g1")
    assert over_grpc.get_response().id == "g1"
    assert over_grpc.get_response().model_version == model_folder(name).name
    np.testing.assert_array_equal(over_grpc.as_numpy(output), over_http.as_numpy(output))
    top = triton_grpc.InferRequestedOutput(output, class_count=2)
    classified = grpc_client.infer(name, inputs_for(triton_grpc, tensors), outputs=[top]).as_numpy(output)
    expected = http.infer(name, inputs_for(triton_http, tensors), outputs=[
        triton_http.InferRequestedOutput(output, class_count=2)]).as_numpy(output)
    np.testing.assert_array_equal(classified, expected)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests_from_tritonclient_get_the_same_answers(server: ServerProcess, compression: str) -> None:
    """tritonclient's request and response compression, over HTTP (JSON and binary tensors,
    whose header length counts the unpacked body) and gRPC: the answers of plain requests."""
    http, grpc_client = clients(server)
    tensors = MODEL_INPUTS["fashion-cnn"]()
    output = _manifest("fashion-cnn").outputs[0].name
    plain = http.infer("fashion-cnn", inputs_for(triton_http, tensors)).as_numpy(output)
    for binary in (False, True):
        packed = http.infer("fashion-cnn", inputs_for(triton_http, tensors, binary_data=binary),
                            outputs=[triton_http.InferRequestedOutput(output, binary_data=binary)],
                            request_compression_algorithm=compression, response_compression_algorithm=compression)
        np.testing.assert_array_equal(packed.as_numpy(output), plain)
    over_grpc = grpc_client.infer("fashion-cnn", inputs_for(triton_grpc, tensors), compression_algorithm=compression)
    np.testing.assert_array_equal(over_grpc.as_numpy(output), plain)
    # an answer large enough to be packed (3,000 rows of JSON logits, ~300 KB)
    many = {name: np.repeat(array, 3000 // len(array) + 1, axis=0)[:3000] for name, array in tensors.items()}
    large = [http.infer("fashion-cnn", inputs_for(triton_http, many, binary_data=True),
                        outputs=[triton_http.InferRequestedOutput(output, binary_data=False)],
                        response_compression_algorithm=algorithm) for algorithm in (compression, None)]
    np.testing.assert_array_equal(large[0].as_numpy(output), large[1].as_numpy(output))


def test_typed_contents_are_read_as_raw_ones_are(server: ServerProcess) -> None:
    x = pixels(2)
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))
    typed = pb.ModelInferRequest(model_name="fashion-cnn")
    tensor = typed.inputs.add(name="pixels", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    raw = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[x.tobytes()])
    raw.inputs.add(name="pixels", datatype="FP32", shape=x.shape)
    answers = [stub.ModelInfer(request) for request in (typed, raw)]
    assert answers[0].raw_output_contents == answers[1].raw_output_contents
    assert list(answers[0].outputs[0].shape) == [2, 10]
    ints = pb.ModelInferRequest(model_name="sst2-lstm")
    ids = ints.inputs.add(name="token_ids", datatype="INT64", shape=[1, 3])
    ids.contents.int64_contents.extend([5, 6, 7])
    lengths = ints.inputs.add(name="lengths", datatype="INT64", shape=[1])
    lengths.contents.int64_contents.append(3)
    assert list(stub.ModelInfer(ints).outputs[0].shape) == [1, 2]


def _http_error(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(triton_http.InferenceServerException) as raised:
        call()
    return raised.value.message()


def _grpc_error(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(triton_grpc.InferenceServerException) as raised:
        call()
    return raised.value.status(), raised.value.message()


BAD_REQUESTS = {
    "wrong shape": ("fashion-cnn", {"pixels": np.zeros((1, 5), np.float32)}, None),
    "wrong datatype": ("fashion-cnn", {"pixels": np.zeros((1, 1, 28, 28), np.float64)}, None),
    "wrong input name": ("fashion-cnn", {"image": np.zeros((1, 1, 28, 28), np.float32)}, None),
    "unknown output": ("fashion-cnn", {"pixels": np.zeros((1, 1, 28, 28), np.float32)}, "probabilities"),
    "non-finite pixels": ("fashion-cnn", {"pixels": np.full((1, 1, 28, 28), np.nan, np.float32)}, None),
    "lengths disagree": ("sst2-lstm", {"token_ids": np.ones((2, 3), np.int64), "lengths": np.ones(3, np.int64)}, None),
    "no inputs": ("fashion-cnn", {}, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_client_mistakes_are_invalid_argument_with_the_http_message(server: ServerProcess, case: str) -> None:
    http, grpc_client = clients(server)
    name, tensors, output = BAD_REQUESTS[case]

    def made(module):  # type: ignore[no-untyped-def]
        given = []
        for key, array in tensors.items():
            datatype = {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64"}[array.dtype.type]
            tensor = module.InferInput(key, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            given.append(tensor)
        return {"inputs": given, "outputs": [module.InferRequestedOutput(output)] if output else None}

    message = _http_error(lambda: http.infer(name, **made(triton_http)))
    assert _grpc_error(lambda: grpc_client.infer(name, **made(triton_grpc))) == ("StatusCode.INVALID_ARGUMENT", message)


def test_unknown_models_and_versions_are_not_found(server: ServerProcess) -> None:
    http, grpc_client = clients(server)
    tensors = inputs_for(triton_grpc, {"pixels": pixels(1)})
    status, message = _grpc_error(lambda: grpc_client.infer("missing", tensors))
    assert status == "StatusCode.NOT_FOUND"
    assert message == _http_error(lambda: http.infer("missing", inputs_for(triton_http, {"pixels": pixels(1)})))
    assert _grpc_error(lambda: grpc_client.infer("fashion-cnn", tensors, model_version="99"))[0] == "StatusCode.NOT_FOUND"
    assert _grpc_error(lambda: grpc_client.get_model_metadata("missing"))[0] == "StatusCode.NOT_FOUND"
    assert _grpc_error(lambda: grpc_client.get_model_config("missing"))[0] == "StatusCode.NOT_FOUND"


def test_a_message_that_is_not_a_request_is_invalid_argument(server: ServerProcess) -> None:
    channel = grpc.insecure_channel(server.grpc_target)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as raised:
        infer(b"\xff\xff\xff\xff not protobuf")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a ModelInferRequest" in raised.value.details()
    unimplemented = channel.unary_unary("/inference.GRPCInferenceService/CudaSharedMemoryStatus")
    with pytest.raises(grpc.RpcError) as raised:
        unimplemented(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_standard_health_and_reflection(server: ServerProcess) -> None:
    channel = grpc.insecure_channel(server.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="nothing.Here"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    watched = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watched).status == health_pb2.HealthCheckResponse.SERVING
    watched.cancel()
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(services)


def test_grpc_calls_are_counted_in_the_same_metrics(server: ServerProcess) -> None:
    _, grpc_client = clients(server)
    grpc_client.infer("fashion-cnn", inputs_for(triton_grpc, {"pixels": pixels(1)}))
    with pytest.raises(triton_grpc.InferenceServerException):
        grpc_client.infer("a-model-nobody-serves", inputs_for(triton_grpc, {"pixels": pixels(1)}))
    metrics = server.metrics()
    assert 'ortserve_requests_total{endpoint="grpc.ModelInfer",model="fashion-cnn",status="OK"}' in metrics
    assert 'ortserve_requests_total{endpoint="grpc.ModelInfer",model="",status="NOT_FOUND"}' in metrics
    assert "a-model-nobody-serves" not in metrics  # a client's string never becomes a label
    assert 'ortserve_request_latency_seconds_count{endpoint="grpc.ModelInfer",model="fashion-cnn"}' in metrics


def test_the_asyncio_client(server: ServerProcess) -> None:
    async def use() -> tuple[bool, np.ndarray, dict]:
        async with triton_grpc_aio.InferenceServerClient(server.grpc_target) as client:
            ready = await client.is_model_ready("fashion-cnn")
            inputs = inputs_for(triton_grpc, {"pixels": pixels(3)})
            results = await asyncio.gather(*(client.infer("fashion-cnn", inputs) for _ in range(8)))
            metadata = await client.get_model_metadata("fashion-cnn", as_json=True)
            return ready, np.stack([r.as_numpy("logits") for r in results]), metadata

    ready, logits, metadata = asyncio.run(use())
    assert ready
    assert metadata["name"] == "fashion-cnn"
    assert logits.shape == (8, 3, 10)
    assert (logits == logits[0]).all()  # the same request gets the same answer, batched or not


def test_sigterm_finishes_accepted_calls_then_stops_taking_new_ones() -> None:
    """gRPC drains with HTTP: health NOT_SERVING at once, the listener closed after the drain
    delay, every call accepted before answered, and the process exits 0."""
    # Batches wait 2 s for company (even when idle), so the calls sit queued when the signal comes.
    args = ["--model-dir", str(MODELS), "--max-queue-delay-ms", "2000", "--max-batch-size", "256",
            "--no-idle-dispatch", "--drain-delay-s", "0.5", "--log-level", "info"]
    with ServerProcess(args) as running:
        assert running.process is not None
        channel = grpc.insecure_channel(running.grpc_target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[pixels(1).tobytes()])
        request.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
        calls = [stub.ModelInfer.future(request, timeout=30) for _ in range(16)]
        wait_queued(running, "fashion-cnn", 16)  # all accepted, none answered yet
        running.process.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        time.sleep(1.0)  # past the drain delay: the listener is closed
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(running.grpc_target)).ModelInfer(request, timeout=5)
        answers = [call.result() for call in calls]
        assert running.process.wait(30) == 0, running.log.read_text()
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [list(a.outputs[0].shape) for a in answers] == [[1, 10]] * 16
    assert "gRPC stopped" in running.log.read_text()


def test_every_worker_serves_grpc_on_the_shared_port() -> None:
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--log-level", "info"]) as running:
        started = "gRPC (KServe V2, health, reflection) on"
        for _ in range(600):  # ready means one worker is; the other may still be warming up
            if running.log.read_text().count(started) == 2:
                break
            time.sleep(0.1)
        request = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[pixels(1).tobytes()])
        request.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
        answers = []
        for _ in range(12):  # a connection each: the kernel spreads them over the workers
            with grpc.insecure_channel(running.grpc_target) as channel:
                answers.append(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10))
        log = running.log.read_text()
    assert [list(a.outputs[0].shape) for a in answers] == [[1, 10]] * 12
    assert log.count(started) == 2, log


def test_streaming_answers_every_request_by_id_and_a_bad_one_with_its_error(server: ServerProcess) -> None:
    """Triton's ModelStreamInfer, through tritonclient's stream: answers as they complete, by
    id; a bad request's error comes on the stream (the HTTP 400's text) and the stream goes on."""
    http, grpc_client = clients(server)
    answers: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    inputs = {i: pixels(2, seed=i) for i in range(6)}
    for i, x in inputs.items():
        grpc_client.async_stream_infer("fashion-cnn", inputs_for(triton_grpc, {"pixels": x}), request_id=str(i))
    bad = {"pixels": np.zeros((1, 5), np.float32)}
    grpc_client.async_stream_infer("fashion-cnn", inputs_for(triton_grpc, bad), request_id="bad")
    got = [answers.get(timeout=30) for _ in range(7)]
    grpc_client.stop_stream()
    results = {r.get_response().id: r.as_numpy("logits") for r, e in got if e is None}
    errors = [e.message() for r, e in got if e is not None]
    assert sorted(results) == [str(i) for i in inputs]
    for i, x in inputs.items():
        unary = grpc_client.infer("fashion-cnn", inputs_for(triton_grpc, {"pixels": x})).as_numpy("logits")
        np.testing.assert_array_equal(results[str(i)], unary)
    assert errors == [_http_error(lambda: http.infer("fashion-cnn", inputs_for(triton_http, bad)))]
    metrics = server.metrics()
    assert 'ortserve_requests_total{endpoint="grpc.ModelStreamInfer",model="fashion-cnn",status="OK"}' in metrics
    assert 'endpoint="grpc.ModelStreamInfer",model="fashion-cnn",status="INVALID_ARGUMENT"' in metrics


@pytest.mark.parametrize("name", ["fashion-cnn", "sst2-lstm"])
@pytest.mark.parametrize("protocol", perf_analyzer.PROTOCOLS)
def test_perf_analyzer_runs_against_both_shipped_models(server: ServerProcess, name: str, protocol: str,
                                                        perf_analyzer_tool: str) -> None:
    """Triton's load tester, unchanged, with the input files README's example writes."""
    folder, seen_as = perf_analyzer.input_folder(perf_analyzer_tool)
    folder.mkdir(parents=True, exist_ok=True)
    written = perf_inputs.write(MODELS, folder, 8)
    done = perf_analyzer.run(perf_analyzer_tool, name, server, protocol, 4,
                             "--input-data", f"{seen_as}/{written[name].name}", *perf_analyzer.QUICK_CHECK)
    assert done.returncode == 0, done.stdout + done.stderr
    assert perf_analyzer.figures(done.stdout)["infer_per_s"] > 0, done.stdout
    assert "error" not in done.stdout.lower(), done.stdout
