"""Triton's system shared-memory extension through the service, in-process: its calls over
HTTP and gRPC, tensors read from and written to regions by both transports, and what is
refused (off by default, API keys, a region not registered, data sent twice)."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from tests.app.conftest import serving, serving_grpc
from tests.app.grpc.test_grpc_behaviour import failure, image_request

IMAGE_BYTES = 784 * 4
LOGITS_BYTES = 10 * 4


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    """The folder the server finds the clients' objects in (--shared-memory-dir)."""
    folder = tmp_path / "shm"
    folder.mkdir()
    return folder


def make_object(objects: Path, data: bytes) -> str:
    name = f"ortserve-test-{uuid.uuid4().hex[:8]}"
    (objects / name).write_bytes(data)
    return "/" + name


def image_with_region(region: str, **parameters: object) -> dict[str, object]:
    return {"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
            "parameters": {"shared_memory_region": region, "shared_memory_byte_size": IMAGE_BYTES} | parameters}


async def test_off_by_default_and_not_listed_then() -> None:
    async with serving_grpc() as (client, stub, _):
        metadata = (await client.get("/v2")).json()
        status = await client.get("/v2/systemsharedmemory/status")
        registered = await client.post("/v2/systemsharedmemory/region/r/register", json={"key": "/x", "byte_size": 4})
        over_grpc = await failure(stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name="r", key="/x", byte_size=4)))
        grpc_metadata = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert "system_shared_memory" not in metadata["extensions"]
    assert "system_shared_memory" not in grpc_metadata.extensions
    assert status.status_code == registered.status_code == 403
    assert "start it with --shared-memory" in registered.json()["error"]
    assert over_grpc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert over_grpc.details() == registered.json()["error"]


async def test_regions_registered_over_either_transport_serve_both(objects: Path) -> None:
    image = np.random.default_rng(3).random((1, 1, 28, 28), dtype=np.float32)
    input_key = make_object(objects, bytes(16) + image.tobytes())
    output_key = make_object(objects, bytes(64))
    async with serving_grpc(shared_memory=True, shared_memory_dir=objects) as (client, stub, _):
        assert "system_shared_memory" in (await client.get("/v2")).json()["extensions"]
        registered = await client.post("/v2/systemsharedmemory/region/images/register",
                                       json={"key": input_key, "offset": 16, "byte_size": IMAGE_BYTES})
        assert registered.status_code == 200, registered.text
        await stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name="logits", key=output_key, offset=0, byte_size=64))
        listed = (await client.get("/v2/systemsharedmemory/status")).json()
        grpc_listed = await stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="images"))

        plain = (await client.post("/v2/models/fashion-cnn/infer", json={"inputs": [{
            "name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": image.ravel().tolist()}]})).json()
        over_http = await client.post("/v2/models/fashion-cnn/infer", json={
            "inputs": [image_with_region("images")],
            "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "logits",
                                                          "shared_memory_byte_size": LOGITS_BYTES,
                                                          "shared_memory_offset": 8}}]})
        written_over_http = (objects / output_key[1:]).read_bytes()

        request = pb.ModelInferRequest(model_name="fashion-cnn")
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
        tensor.parameters["shared_memory_region"].string_param = "images"
        tensor.parameters["shared_memory_byte_size"].int64_param = IMAGE_BYTES
        output = request.outputs.add(name="logits")
        output.parameters["shared_memory_region"].string_param = "logits"
        output.parameters["shared_memory_byte_size"].int64_param = LOGITS_BYTES
        (objects / output_key[1:]).write_bytes(bytes(64))
        over_grpc = await stub.ModelInfer(request)
        written_over_grpc = (objects / output_key[1:]).read_bytes()

    assert {r["name"] for r in listed} == {"images", "logits"}
    assert grpc_listed.regions["images"].offset == 16
    assert grpc_listed.regions["images"].key == input_key
    expected = np.array(plain["outputs"][0]["data"], np.float32)
    assert over_http.status_code == 200, over_http.text
    assert over_http.json()["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [1, 10]}]  # no data
    np.testing.assert_array_equal(np.frombuffer(written_over_http[8:8 + LOGITS_BYTES], np.float32), expected)
    assert written_over_http[:8] == bytes(8)
    assert written_over_http[8 + LOGITS_BYTES:] == bytes(16)
    assert list(over_grpc.raw_output_contents) == [b""]  # one entry per output: Triton's clients index them so
    assert list(over_grpc.outputs[0].shape) == [1, 10]
    np.testing.assert_array_equal(np.frombuffer(written_over_grpc[:LOGITS_BYTES], np.float32), expected)


async def test_what_a_region_cannot_hold_is_refused_before_the_model_runs(objects: Path) -> None:
    key = make_object(objects, bytes(IMAGE_BYTES))
    async with serving_grpc(shared_memory=True, shared_memory_dir=objects) as (client, stub, _):
        no_key = await client.post("/v2/systemsharedmemory/region/r/register", json={"byte_size": 4})
        no_size = await client.post("/v2/systemsharedmemory/region/r/register", json={"key": key})
        too_large = await client.post("/v2/systemsharedmemory/region/r/register",
                                      json={"key": key, "byte_size": IMAGE_BYTES + 1})
        await client.post("/v2/systemsharedmemory/region/r/register", json={"key": key, "byte_size": IMAGE_BYTES})
        unknown = await client.post("/v2/models/fashion-cnn/infer", json={"inputs": [image_with_region("other")]})
        both = await client.post("/v2/models/fashion-cnn/infer", json={"inputs": [
            image_with_region("r") | {"data": [0.0] * 784}]})
        small_output = await client.post("/v2/models/fashion-cnn/infer", json={
            "inputs": [image_with_region("r")],
            "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8}}]})
        missing_status = await client.get("/v2/systemsharedmemory/region/other/status")
        raw_too = image_request()
        raw_too.inputs[0].parameters["shared_memory_region"].string_param = "r"
        raw_too.inputs[0].parameters["shared_memory_byte_size"].int64_param = IMAGE_BYTES
        refused_over_grpc = await failure(stub.ModelInfer(raw_too))
        missing_over_grpc = await failure(stub.SystemSharedMemoryStatus(
            pb.SystemSharedMemoryStatusRequest(name="other")))
        await client.post("/v2/systemsharedmemory/unregister")
        gone = await client.post("/v2/models/fashion-cnn/infer", json={"inputs": [image_with_region("r")]})
    assert no_key.status_code == no_size.status_code == too_large.status_code == 400
    assert "'key' must be the shared-memory object's name" in no_key.json()["error"]
    assert "'byte_size' is missing" in no_size.json()["error"]
    assert "run past the end of key" in too_large.json()["error"]
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "input 'pixels': no shared memory region 'other' is registered"
    assert both.status_code == 400
    assert "sends data as well" in both.json()["error"]
    assert small_output.status_code == 400  # written after the model ran: the output's 40 bytes do not fit 8
    assert small_output.json()["error"] == "output 'logits' takes 40 bytes, more than its shared_memory_byte_size 8"
    assert missing_status.status_code == 404
    assert refused_over_grpc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sends data as well" in refused_over_grpc.details()
    assert missing_over_grpc.code() == grpc.StatusCode.NOT_FOUND
    assert gone.status_code == 400
    assert "no shared memory region 'r'" in gone.json()["error"]


async def test_the_calls_take_an_api_key_where_inference_does(objects: Path) -> None:
    async with serving(shared_memory=True, shared_memory_dir=objects, api_keys=["k"]) as client:
        without = await client.get("/v2/systemsharedmemory/status")
        with_key = await client.get("/v2/systemsharedmemory/status", headers={"authorization": "Bearer k"})
    assert without.status_code == 401
    assert with_key.status_code == 200
    assert with_key.json() == []


async def test_a_large_input_is_read_off_the_loop_and_an_output_counts_as_in_the_answer(
        objects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 images (313 KB) read from a region are decoded on a decode thread, as a body that
    large is; an output written to a region is bounded by max_response_bytes as in the answer."""
    from app.offload import Offload

    images = np.random.default_rng(5).random((100, 1, 28, 28), dtype=np.float32)
    key = make_object(objects, images.tobytes())
    output_key = make_object(objects, bytes(100 * LOGITS_BYTES))
    offloaded = []
    real_run = Offload.run

    async def counted(self, function, *args):  # type: ignore[no-untyped-def]
        offloaded.append(getattr(function, "__name__", str(function)))
        return await real_run(self, function, *args)

    monkeypatch.setattr(Offload, "run", counted)
    request = {"inputs": [{"name": "pixels", "shape": [100, 1, 28, 28], "datatype": "FP32", "parameters": {
        "shared_memory_region": "images", "shared_memory_byte_size": images.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "out",
                                                      "shared_memory_byte_size": 100 * LOGITS_BYTES}}]}
    async with serving(shared_memory=True, shared_memory_dir=objects) as client:
        for name, where, size in (("images", key, images.nbytes), ("out", output_key, 100 * LOGITS_BYTES)):
            await client.post(f"/v2/systemsharedmemory/region/{name}/register", json={"key": where, "byte_size": size})
        answered = await client.post("/v2/models/fashion-cnn/infer", json=request)
    assert answered.status_code == 200, answered.text
    assert "decode" in offloaded
    async with serving(shared_memory=True, shared_memory_dir=objects, max_response_bytes=2000) as client:
        for name, where, size in (("images", key, images.nbytes), ("out", output_key, 100 * LOGITS_BYTES)):
            await client.post(f"/v2/systemsharedmemory/region/{name}/register", json={"key": where, "byte_size": size})
        refused = await client.post("/v2/models/fashion-cnn/infer", json=request)
    assert refused.status_code == 413
