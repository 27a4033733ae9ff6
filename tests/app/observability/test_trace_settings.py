"""Triton's trace extension (app/observability/trace_settings.py): tracing turned on and off
and its rate changed while serving, over HTTP and gRPC, with Triton's clients, in every
worker; what cannot change here is refused, never ignored."""

from __future__ import annotations

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb

from app.errors import InvalidInput
from app.observability.trace_settings import TraceSettings
from load_tests.server import ServerProcess
from tests.app.conftest import answered_by_both_workers, serving_grpc, wait_for
from tests.app.grpc.test_grpc_behaviour import failure
from tests.conftest import MODELS

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}


def test_triton_settings_map_to_tracing_on_off_and_its_fraction() -> None:
    started = TraceSettings.started(False, 0.3)
    assert started.as_triton() == {"trace_level": ["OFF"], "trace_rate": "3", "trace_count": "-1",
                                   "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"}
    on = started.changed({"trace_level": ["TIMESTAMPS"], "trace_rate": "10"})
    assert (on.on, on.sample) == (True, 0.1)
    assert on.changed({"trace_level": "OFF"}).on is False  # a string as well as a list
    assert on.changed({"trace_level": None, "trace_rate": []}) == started  # cleared: the start values
    assert on.changed({"trace_count": "-1", "trace_file": "", "trace_mode": "opentelemetry"}) == on
    # every setting as another worker wrote them (trace_rate "3" for 0.3): the fraction stays as started
    assert started.changed(started.changed({"trace_level": ["TIMESTAMPS"]}).as_triton()).sample == 0.3


@pytest.mark.parametrize(("asked", "why"), [
    ({"trace_level": ["TENSORS"]}, "TENSORS is not served"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, 'trace_level is \\["OFF"\\] or \\["TIMESTAMPS"\\]'),
    ({"trace_rate": "0"}, "a whole number of requests, 1 or more"),
    ({"trace_rate": "1.5"}, "a whole number of requests"),
    ({"trace_rate": 10}, "takes a string or a list of strings"),
    ({"trace_file": "/tmp/trace.json"}, "never a file"),
    ({"trace_count": "100"}, "trace_count is '-1' and cannot change"),
    ({"trace_mode": "triton"}, "OpenTelemetry's"),
    ({"trace_sample": "1"}, "unknown trace setting 'trace_sample'"),
])
def test_what_cannot_change_is_refused_saying_why(asked: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        TraceSettings.started(True, 1.0).changed(asked)


async def test_tracing_turned_on_and_off_over_http_and_grpc() -> None:
    async with serving_grpc(admin_token=TOKEN) as (client, stub, _):
        assert "trace" in (await client.get("/v2")).json()["extensions"]
        before = await client.post("/v2/models/fashion-cnn/infer", json=IMAGE)
        unauthorized = await client.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"]})
        turned_on = await client.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"]}, headers=ADMIN)
        traced = await client.post("/v2/models/fashion-cnn/infer", json=IMAGE)
        over_grpc = await stub.TraceSetting(pb.TraceSettingRequest())
        refused_grpc = await failure(stub.TraceSetting(pb.TraceSettingRequest(
            settings={"trace_level": pb.TraceSettingRequest.SettingValue(value=["OFF"])})))
        off = await stub.TraceSetting(pb.TraceSettingRequest(
            settings={"trace_level": pb.TraceSettingRequest.SettingValue(value=["OFF"])}),
            metadata=(("authorization", f"Bearer {TOKEN}"),))
        after = await client.post("/v2/models/fashion-cnn/infer", json=IMAGE)
        model_read = await client.get("/v2/models/fashion-cnn/trace/setting")
        unknown_model = await client.get("/v2/models/no-such-model/trace/setting")
        per_model = await client.post("/v2/models/fashion-cnn/trace/setting", json={"trace_rate": "5"}, headers=ADMIN)
        bad = await client.post("/v2/trace/setting", json={"trace_level": ["TENSORS"]}, headers=ADMIN)
    assert "x-trace-id" not in before.headers
    assert unauthorized.status_code == 401
    assert turned_on.status_code == 200
    assert turned_on.json()["trace_level"] == ["TIMESTAMPS"]
    assert len(traced.headers["x-trace-id"]) == 32
    assert list(over_grpc.settings["trace_level"].value) == ["TIMESTAMPS"]
    assert refused_grpc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert list(off.settings["trace_level"].value) == ["OFF"]
    assert "x-trace-id" not in after.headers
    assert model_read.json()["trace_level"] == ["OFF"]
    assert unknown_model.status_code == 404
    assert per_model.status_code == bad.status_code == 400
    assert "not kept per model" in per_model.json()["error"]


@pytest.mark.server
def test_a_change_through_one_worker_holds_in_every_worker() -> None:
    """tritonclient's update_trace_settings through one connection (one worker): requests on
    fresh connections, which the kernel spreads over both workers, are all traced, then none."""
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "2", "--no-warmup", "--log-level", "info",
                        "--admin-token", TOKEN]) as server:
        answered_by_both_workers(server, 2)
        client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}, headers=ADMIN)

        def traced(requests: int) -> list[bool]:
            return ["x-trace-id" in httpx.post(f"{server.url}/v2/models/fashion-cnn/infer", json=IMAGE).headers
                    for _ in range(requests)]

        wait_for(lambda: all(traced(16)))  # each worker looks for changes every 0.1 s
        over_grpc = triton_grpc.InferenceServerClient(server.grpc_target)
        over_grpc.update_trace_settings(settings={"trace_level": ["OFF"]}, headers={"authorization": f"Bearer {TOKEN}"})
        wait_for(lambda: not any(traced(16)))
        assert client.get_trace_settings()["trace_level"] == ["OFF"]
