"""The gRPC service in-process (its server on the lifespan's event loop, as in production):
access, the repository API, deadlines, admission, cancelled calls and the drain, each under
the code gRPC clients expect, with the HTTP path's message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from app.manifest import load_manifest
from app.preprocess import normalize_pixels
from tests.app.conftest import left_behind, sample_images, serving_grpc
from tests.conftest import model_folder

TOKEN = "admin-secret"


def image_request(n: int = 1, model: str = "fashion-cnn") -> pb.ModelInferRequest:
    spec = load_manifest(model_folder("fashion-cnn")).preprocessing
    x = normalize_pixels(sample_images(n), spec)  # type: ignore[arg-type]
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="pixels", datatype="FP32", shape=x.shape)
    return request


def text_request(rows: int, timeout_us: int | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sst2-lstm", raw_input_contents=[
        np.full((rows, 1), 5, np.int64).tobytes(), np.ones(rows, np.int64).tobytes()])
    request.inputs.add(name="token_ids", datatype="INT64", shape=[rows, 1])
    request.inputs.add(name="lengths", datatype="INT64", shape=[rows])
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    return request


async def failure(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def _first(call):  # type: ignore[no-untyped-def]
    async for answer in call:
        return answer
    return None


async def _silent():  # type: ignore[no-untyped-def]
    """A stream's requests that never come: the call ends, and this with it, on the server's word."""
    await asyncio.Event().wait()
    yield image_request()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_api_keys_guard_inference_as_over_http() -> None:
    async with serving_grpc(api_keys=["key-1"]) as (http, stub, _):
        missing = await failure(stub.ModelInfer(image_request()))
        wrong = await failure(stub.ModelInfer(image_request(), metadata=bearer("key-2")))
        answered = await stub.ModelInfer(image_request(), metadata=bearer("key-1"))
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="fashion-cnn"))  # open, as over HTTP
        # a stream is refused at its start, before any message: one that never sends (a message
        # sent could lose the race with the refusal, and grpc's client then reports its own
        # failed write, INTERNAL, instead of the server's code)
        stream = await failure(_first(stub.ModelStreamInfer(_silent(), timeout=60)))
        over_http = await http.post("/v2/models/fashion-cnn/infer", json={"inputs": []})
    assert missing.code() == wrong.code() == stream.code() == grpc.StatusCode.UNAUTHENTICATED
    assert missing.details() == over_http.json()["error"]
    assert list(answered.outputs[0].shape) == [1, 10]
    assert metadata.name == "fashion-cnn"


async def test_the_repository_api_loads_and_unloads_with_the_admin_token(model_root: Path) -> None:
    async with serving_grpc(model_dir=model_root, model_control_mode="explicit", load_model=["fashion-cnn"],
                            admin_token=TOKEN) as (_, stub, _):
        admin = bearer(TOKEN)
        index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=admin)
        states = {m.name: m.state for m in index.models}
        not_loaded = await failure(stub.ModelInfer(text_request(1)))
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="sst2-lstm"), metadata=admin)
        loaded = await stub.ModelReady(pb.ModelReadyRequest(name="sst2-lstm"))
        answered = await stub.ModelInfer(text_request(2))
        config = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 1000}}
        load = pb.RepositoryModelLoadRequest(model_name="sst2-lstm")
        load.parameters["config"].string_param = json.dumps(config)
        await stub.RepositoryModelLoad(load, metadata=admin)
        reconfigured = await stub.ModelConfig(pb.ModelConfigRequest(name="sst2-lstm"))
        load.parameters["config"].string_param = json.dumps({"max_batch_size": 4, "sequence_batching": {}})
        refused = await failure(stub.RepositoryModelLoad(load, metadata=admin))
        with_file = pb.RepositoryModelLoadRequest(model_name="sst2-lstm")
        with_file.parameters["file:1/model.onnx"].bytes_param = b"\x08\x07"
        no_files = await failure(stub.RepositoryModelLoad(with_file, metadata=admin))
        ready_only = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=admin)
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="sst2-lstm"), metadata=admin)
        unloaded = await stub.ModelReady(pb.ModelReadyRequest(name="sst2-lstm"))
        no_token = await failure(stub.RepositoryIndex(pb.RepositoryIndexRequest()))
    assert states["fashion-cnn"] == "READY"
    assert "sst2-lstm" in states
    assert not_loaded.code() == grpc.StatusCode.UNAVAILABLE
    assert "is not loaded" in not_loaded.details()
    assert loaded.ready
    assert not unloaded.ready
    assert list(answered.outputs[0].shape) == [2, 2]
    assert reconfigured.config.max_batch_size == 4
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the load's sequence_batching" in refused.details()
    assert "a sequence model is a tensors model" in refused.details()  # sst2-lstm classifies text
    assert no_files.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "files (file:...) need the model's configuration beside them in parameters.config" in no_files.details()
    assert {m.name for m in ready_only.models} == {"fashion-cnn", "sst2-lstm"}
    assert all(m.state == "READY" for m in ready_only.models)
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_naming_a_repository_is_refused_as_triton_refuses_it(model_root: Path) -> None:
    """`repository_name` would pick one of several model directories; names are unique
    across them, so only the empty name is served, and a call naming one changes nothing."""
    async with serving_grpc(model_dir=model_root, model_control_mode="explicit", admin_token=TOKEN) as (_, stub, _):
        admin = bearer(TOKEN)
        calls = [stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="models"), metadata=admin),
                 stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(repository_name="models",
                                                                        model_name="sst2-lstm"), metadata=admin),
                 stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(repository_name="models",
                                                                            model_name="sst2-lstm"), metadata=admin)]
        refused = [await failure(call) for call in calls]
        ready = await stub.ModelReady(pb.ModelReadyRequest(name="sst2-lstm"))
    for error in refused:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == ("repository_name 'models': naming a repository is not supported; leave it "
                                   "out (model names are unique across the model directories)")
    assert not ready.ready


async def test_the_repository_api_is_permission_denied_when_off_or_not_explicit() -> None:
    async with serving_grpc() as (_, stub, _):
        off = await failure(stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer(TOKEN)))
    async with serving_grpc(admin_token=TOKEN) as (_, stub, _):
        wrong_mode = await failure(stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="fashion-cnn"), metadata=bearer(TOKEN)))
        index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer(TOKEN))
    assert off.code() == wrong_mode.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "the repository API is off" in off.details()
    assert "only in the explicit model control mode" in wrong_mode.details()
    assert {m.name for m in index.models} == {"fashion-cnn", "sst2-lstm"}


async def test_deadlines_come_from_the_call_clamped_by_the_server() -> None:
    # Batches wait 300 ms for company (even when idle): a call with less time to live expires there.
    async with serving_grpc(max_queue_delay_ms=300, max_batch_size=64, request_timeout_s=0.08,
                            idle_dispatch=False) as (http, stub, _):
        clamped = await failure(stub.ModelInfer(text_request(1), timeout=30))
        asked = await failure(stub.ModelInfer(text_request(1, timeout_us=30_000), timeout=30))
        over_http = await http.post("/v2/models/sst2-lstm/infer", json={
            "inputs": [{"name": "token_ids", "shape": [1, 1], "datatype": "INT64", "data": [5]},
                       {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1]}]})
    async with serving_grpc(max_queue_delay_ms=300, max_batch_size=64, idle_dispatch=False) as (_, stub, _):
        own = await failure(stub.ModelInfer(text_request(1), timeout=0.05))
    assert clamped.code() == asked.code() == own.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert clamped.details() == over_http.json()["error"]
    assert "within 0.08 s" in clamped.details()  # no more than the server's own limit
    assert "within 0.03 s" in asked.details()  # the request's own timeout parameter, as over HTTP


async def test_a_full_queue_is_resource_exhausted_with_retry_after_and_loses_nothing() -> None:
    async with serving_grpc(max_queue_size=4, retry_after_s=3, max_queue_delay_ms=300, max_batch_size=64,
                            idle_dispatch=False) as (http, stub, _):
        queued = [asyncio.ensure_future(stub.ModelInfer(text_request(1))) for _ in range(3)]
        while 'ortserve_queue_depth{model="sst2-lstm"} 3.0' not in (await http.get("/metrics")).text:
            await asyncio.sleep(0.005)
        call = stub.ModelInfer(text_request(2))
        full = await failure(call)
        trailing = dict(await call.trailing_metadata())
        answered = await asyncio.gather(*queued)
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "has 3 items (48 bytes) queued (limits 4 items" in full.details()
    assert trailing["retry-after"] == "3"
    assert [list(a.outputs[0].shape) for a in answered] == [[1, 2]] * 3


async def test_a_message_over_max_body_bytes_is_refused_by_size() -> None:
    async with serving_grpc(max_body_bytes=1000) as (_, stub, _):
        refused = await failure(stub.ModelInfer(image_request()))  # 3,136 bytes of pixels
        small = await stub.ModelInfer(text_request(1))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(small.outputs[0].shape) == [1, 2]


async def test_a_negative_dimension_is_invalid_argument_saying_so() -> None:
    request = image_request()
    request.inputs[0].shape[0] = -1  # "any" in a model's shape; a request sends sizes
    async with serving_grpc() as (_, stub, _):
        refused = await failure(stub.ModelInfer(request))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'pixels': shape [-1, 1, 28, 28] has a negative dimension" in refused.details()


async def test_tensors_in_shared_memory_are_refused_saying_why_while_the_extension_is_off() -> None:
    """Without --shared-memory, a tensor that names a region would otherwise be read from
    the request (an input) or left unwritten in the region (an output)."""
    on_input, on_output = image_request(), image_request()
    on_input.inputs[0].parameters["shared_memory_region"].string_param = "input_region"
    on_output.outputs.add(name="logits").parameters["shared_memory_region"].string_param = "output_region"
    async with serving_grpc() as (client, stub, _):
        refused = [await failure(stub.ModelInfer(on_input)), await failure(stub.ModelInfer(on_output))]
        over_http = await client.post("/v2/models/fashion-cnn/infer", json={
            "inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}],
            "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "output_region"}}]})
    assert [r.code() for r in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert "input 'pixels' names a shared memory region" in refused[0].details()
    assert "output 'logits' names a shared memory region" in refused[1].details()
    assert "start the server" not in refused[0].details()
    assert "--shared-memory" in refused[0].details()
    assert over_http.status_code == 400
    assert over_http.json()["error"] == refused[1].details()


async def test_a_compressed_message_is_bounded_by_its_size_unpacked() -> None:
    """A gzip message of a few KB that unpacks past max_body_bytes is refused, not unpacked
    whole into memory (gRPC core counts the decompressed bytes against the limit); a
    compressed request within it is served as any other."""
    zeros = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[bytes(3136 * 1000)])
    zeros.inputs.add(name="pixels", datatype="FP32", shape=[1000, 1, 28, 28])
    async with serving_grpc(max_body_bytes=100_000) as (_, stub, _):
        refused = await failure(stub.ModelInfer(zeros, compression=grpc.Compression.Gzip))
        served = await stub.ModelInfer(image_request(), compression=grpc.Compression.Gzip)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.details()
    assert list(served.outputs[0].shape) == [1, 10]


async def test_a_cancelled_calls_rows_are_dropped_before_they_run() -> None:
    async with serving_grpc(max_queue_delay_ms=300, max_batch_size=64, idle_dispatch=False) as (http, stub, _):
        call = stub.ModelInfer(text_request(3))
        while 'ortserve_queue_depth{model="sst2-lstm"} 3.0' not in (await http.get("/metrics")).text:
            await asyncio.sleep(0.005)
        call.cancel()
        dropped = 'ortserve_requests_dropped_total{model="sst2-lstm",reason="client_gone"} 1.0'
        while dropped not in (await http.get("/metrics")).text:  # once the batch forms, 300 ms on
            await asyncio.sleep(0.02)
        stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="sst2-lstm"))
    assert call.cancelled()
    assert stats.model_stats[0].inference_count == 0  # its rows never ran


async def test_health_turns_not_serving_with_readiness_during_the_drain() -> None:
    async with serving_grpc() as (http, stub, app):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.services.settings.grpc_port}")
        channel_health = health_pb2_grpc.HealthStub(channel)
        before = await channel_health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        app.services.start_draining()  # what SIGTERM does first
        after = await channel_health.Check(health_pb2.HealthCheckRequest(service=""))
        ready = await stub.ServerReady(pb.ServerReadyRequest())
        live = await stub.ServerLive(pb.ServerLiveRequest())
        http_ready = await http.get("/v2/health/ready")
        still_answers = await stub.ModelInfer(image_request())  # accepted until the listener closes
        await channel.close()
    assert before.status == health_pb2.HealthCheckResponse.SERVING
    assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not ready.ready
    assert live.live
    assert http_ready.status_code == 503
    assert list(still_answers.outputs[0].shape) == [1, 10]


async def test_a_stream_runs_at_most_max_grpc_calls_of_its_requests_at_once() -> None:
    """Batches wait 1 s for company: with room for two requests, a stream of five has two
    queued while that batch waits (not five), and every one is still answered."""
    async with serving_grpc(max_grpc_calls=2, max_queue_delay_ms=1000, max_batch_size=64,
                            idle_dispatch=False) as (http, stub, _):
        requests = [text_request(1) for _ in range(5)]
        for number, request in enumerate(requests):
            request.id = str(number)

        async def answers() -> list[str]:
            return [reply.infer_response.id async for reply in stub.ModelStreamInfer(iter(requests))]

        reading = asyncio.ensure_future(answers())
        queued = 'ortserve_queue_depth{model="sst2-lstm"} 2.0'
        while queued not in (await http.get("/metrics")).text:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # the batch still waits for company: nothing more was read
        held = (await http.get("/metrics")).text
        answered = await reading
    assert queued in held
    assert sorted(answered) == ["0", "1", "2", "3", "4"]


async def test_a_stream_whose_client_does_not_read_holds_a_bounded_number_of_answers(tmp_path: Path) -> None:
    """A client that writes messages and never reads the answers: the stream stops reading
    once its unwritten answers reach one largest answer's worth (max_response_bytes) or
    max_grpc_calls messages, instead of running every message and keeping every answer
    (1,500 answers of 1 MB were 1.5-1.9 GB resident before). Once the client reads, every
    message is answered."""
    from tests.app.onnx_models import save, widen

    save(tmp_path, "widen", widen(65536))  # 256 KiB of FP32 per answer, from 4 bytes in
    sent = 60
    async with serving_grpc(model_dir=tmp_path, max_grpc_calls=4, max_response_bytes=1 << 20) as (_, stub, _):
        call = stub.ModelStreamInfer()
        for number in range(sent):
            request = pb.ModelInferRequest(model_name="widen", id=str(number),
                                           raw_input_contents=[np.ones((1, 1), np.float32).tobytes()])
            request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
            await call.write(request)

        async def ran() -> int:
            stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="widen"))
            return stats.model_stats[0].inference_count

        before, now = -1, await ran()
        while now != before:  # until the server stops taking messages (it never ran all of them)
            await asyncio.sleep(0.3)
            before, now = now, await ran()
        held = now
        await call.done_writing()
        answered = [reply async for reply in call]
    assert held < sent
    assert sorted(int(reply.infer_response.id) for reply in answered) == list(range(sent))
    assert all(not reply.error_message for reply in answered)


async def test_a_streams_messages_count_its_earlier_ones_still_unanswered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream is read a message at a time: each reaches the model alone, finds it idle, and
    would run inline on the loop, one by one, however many its client has in flight. Each
    message carries how many of the stream's earlier ones are read but not yet answered on
    the wire, which keeps its batch off the loop (ServedModel.infer `in_flight_beside`)."""
    import app.grpc.service
    from app.grpc.service import InferenceService, _read_infer

    seen: list[int] = []
    run = app.grpc.service.run_inference

    async def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["in_flight_beside"])  # type: ignore[arg-type]
        return await run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app.grpc.service, "run_inference", spy)

    class Context:  # what the stream's handler reads of grpc.aio's context
        def time_remaining(self) -> None:
            return None

        def cancelled(self) -> bool:
            return False

        def invocation_metadata(self) -> tuple[()]:
            return ()

    async with serving_grpc() as (_, _, served):
        service = InferenceService(served.services, served.request_series, served)
        body = image_request().SerializeToString()
        sixth = asyncio.Event()

        async def requests():  # type: ignore[no-untyped-def]
            for _ in range(5):  # five sent at once, as a client with five in flight
                yield _read_infer(body)
            await sixth.wait()  # the sixth once every answer went out: alone again
            yield _read_infer(body)

        replies = []
        async for reply in service.model_stream_infer(requests(), Context()):  # type: ignore[arg-type]
            replies.append(pb.ModelStreamInferResponse.FromString(reply))
            if len(replies) == 5:
                sixth.set()
    assert len(replies) == 6
    assert not any(r.error_message for r in replies)
    assert seen == [0, 1, 2, 3, 4, 0]


async def test_a_refused_calls_message_is_let_go_at_once_not_left_to_the_garbage_collector() -> None:
    """grpc.aio keeps the AbortError a refused call ends with on the call, and its traceback
    holds the handler's frame: a cycle that only Python's cyclic collector frees, which can be
    minutes away. Measured before: 300 refused 4 MB calls left a worker 1 GB larger, 976 MB of
    it live in its heap 10 s later (docs/benchmarks.md, "A refused gRPC call's message"). So
    the message must go with the call, by reference count alone: the cyclic collector is off
    here, and 20 refused 1 MB calls may leave a fraction of one of them behind."""
    request = image_request(334, model="no-such-model")  # 1 MB of raw FP32 rows
    assert request.ByteSize() > 1_000_000
    async with serving_grpc() as (_, stub, _app):
        assert (await failure(stub.ModelInfer(request))).code() == grpc.StatusCode.NOT_FOUND  # warm
        with left_behind() as left:
            for _ in range(20):
                assert (await failure(stub.ModelInfer(request))).code() == grpc.StatusCode.NOT_FOUND
            await asyncio.sleep(0.2)  # every call's end on the server handled
    assert left.bytes < 1_000_000, f"{left.bytes:,} bytes left behind by 20 refused calls of {request.ByteSize():,} bytes"


async def test_a_streams_refused_messages_are_let_go_at_once() -> None:
    """The stream's side of the test above: each refused message is answered on the stream
    with its error, and let go with its answer (measured: 10 KB left after 20 of 1 MB)."""
    request = image_request(334, model="no-such-model")

    async def messages(count: int):  # type: ignore[no-untyped-def]
        for _ in range(count):
            yield request

    async with serving_grpc() as (_, stub, _app):
        assert [a.error_message != "" async for a in stub.ModelStreamInfer(messages(1))] == [True]  # warm
        with left_behind() as left:
            errors = [a.error_message async for a in stub.ModelStreamInfer(messages(20))]
            await asyncio.sleep(0.2)
    assert len(errors) == 20
    assert all("unknown model 'no-such-model'" in e for e in errors)
    assert left.bytes < 1_000_000, f"{left.bytes:,} bytes left behind by 20 refused messages of {request.ByteSize():,} bytes"
