"""A stateful model, as Triton's sequence batcher serves it (sequence_batching with implicit
state): requests name their sequence, the server fills the control inputs and keeps each
sequence's state, a sequence's requests run in their order, and different sequences' requests
batch together. The model (tests/app/onnx_models.py `accumulator`) adds each request's x to its
sequence's total and echoes its controls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.model_facts import FactsError, from_triton_text
from load_tests.sequences import ACCUMULATOR_CONFIG, accumulator
from load_tests.server import ServerProcess
from load_tests.stats import sample_total
from tests.app.conftest import serving, serving_grpc
from tests.app.onnx_models import save

MODEL = "accumulator"


def repository(root: Path, config: str = ACCUMULATOR_CONFIG) -> Path:
    save(root, MODEL, accumulator())
    (root / MODEL / "config.pbtxt").write_text(config)
    return root


def step(x: float, rows: int = 1, **parameters: Any) -> dict[str, Any]:
    return {"parameters": parameters,
            "inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32", "data": [x] * rows}]}


def outputs(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o["data"][0] for o in answer.json()["outputs"]}


async def test_each_sequence_keeps_its_own_state_and_sees_its_controls(tmp_path: Path) -> None:
    async with serving(model_dir=repository(tmp_path)) as client:
        async def sequence(sequence_id: int, values: list[float]) -> list[dict[str, Any]]:
            seen = []
            for i, x in enumerate(values):
                flags = {"sequence_start": i == 0, "sequence_end": i == len(values) - 1}
                seen.append(outputs(await client.post(f"/v2/models/{MODEL}/infer",
                                                      json=step(x, sequence_id=sequence_id, **flags))))
            return seen
        # eight sequences at once: their steps meet in the batcher
        runs = await asyncio.gather(*(sequence(100 + n, [float(n + 1)] * 5) for n in range(8)))
        stats = (await client.get(f"/v2/models/{MODEL}/stats")).json()["model_stats"][0]
        metadata = (await client.get(f"/v2/models/{MODEL}")).json()
        server = (await client.get("/v2")).json()
    for n, seen in enumerate(runs):
        assert [s["total"] for s in seen] == [(n + 1) * k for k in range(1, 6)]  # its own running total
        assert [s["started"] for s in seen] == [1, 0, 0, 0, 0]
        assert [s["ended"] for s in seen] == [0, 0, 0, 0, 1]
        assert {s["ready"] for s in seen} == {1}
        assert {s["corrid"] for s in seen} == {100 + n}
    assert stats["inference_count"] == 40
    assert stats["execution_count"] < 40  # steps of different sequences ran in the same batches
    assert [t["name"] for t in metadata["inputs"]] == ["x"]  # clients send x; the server fills the rest
    assert "acc_out" not in [t["name"] for t in metadata["outputs"]]  # the state is kept, not answered
    assert "sequence" in server["extensions"]  # Triton's sequence extension: its three parameters


async def test_a_sequences_requests_sent_at_once_run_one_at_a_time_in_their_order(tmp_path: Path) -> None:
    values = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    async with serving(model_dir=repository(tmp_path)) as client:
        first = outputs(await client.post(f"/v2/models/{MODEL}/infer",
                                          json=step(0.5, sequence_id=4242, sequence_start=True)))
        answers = await asyncio.gather(*(client.post(f"/v2/models/{MODEL}/infer", json=step(x, sequence_id=4242))
                                         for x in values))
    totals = [outputs(a)["total"] for a in answers]
    assert first["total"] == 0.5
    # each saw the state the one before it left: the totals are the running sums, in order sent
    assert totals == list(0.5 + np.cumsum(values))


async def test_what_a_sequence_model_refuses_says_why(tmp_path: Path) -> None:
    config = ACCUMULATOR_CONFIG.replace("max_candidate_sequences: 16", "max_candidate_sequences: 2")
    async with serving(model_dir=repository(tmp_path, config)) as client:
        async def send(body: dict[str, Any]) -> Any:
            return await client.post(f"/v2/models/{MODEL}/infer", json=body)
        no_id = await send(step(1.0))
        not_started = await send(step(1.0, sequence_id=5))
        two_rows = await send(step(1.0, rows=2, sequence_id=5, sequence_start=True))
        string_id = await send(step(1.0, sequence_id="words", sequence_start=True))  # the model's ID is UINT64
        bad_flag = await send(step(1.0, sequence_id=5, sequence_start="yes"))
        too_big = await send(step(1.0, sequence_id=2**64, sequence_start=True))  # Triton's IDs are uint64
        negative = await send(step(1.0, sequence_id=-1, sequence_start=True))
        flag_alone = await send(step(1.0, sequence_end=True))
        for n in (1, 2):
            assert (await send(step(1.0, sequence_id=n, sequence_start=True))).status_code == 200
        third = await send(step(1.0, sequence_id=3, sequence_start=True))
        await send(step(1.0, sequence_id=1, sequence_end=True))
        after_end = await send(step(1.0, sequence_id=1))
        third_again = await send(step(1.0, sequence_id=3, sequence_start=True))
    assert no_id.status_code == 400
    assert "each request gives its sequence_id parameter" in no_id.json()["error"]
    assert not_started.status_code == 400
    assert "sequence 5 of model 'accumulator' is not active: its first request sets sequence_start true" in \
        not_started.json()["error"]
    assert two_rows.status_code == 400
    assert "one row; got 2" in two_rows.json()["error"]
    assert string_id.status_code == 400
    assert "this model's correlation ID is a number (UINT64)" in string_id.json()["error"]
    assert bad_flag.status_code == 400
    assert "parameters.sequence_start must be true or false" in bad_flag.json()["error"]
    for refused in (too_big, negative):
        assert refused.status_code == 400
        assert "parameters.sequence_id must be a whole number (0 to 2**64 - 1) or a string" in refused.json()["error"]
    assert flag_alone.status_code == 400
    assert "need a sequence_id" in flag_alone.json()["error"]
    assert third.status_code == 503  # two sequences active, the model's most
    assert "has 2 sequences active in this worker" in third.json()["error"]
    assert third.headers["Retry-After"] == "1"
    assert after_end.status_code == 400  # ended: its next request must start it again
    assert third_again.status_code == 200  # an ended sequence made room


async def test_a_sequence_idle_past_its_time_is_ended(tmp_path: Path) -> None:
    config = ACCUMULATOR_CONFIG.replace("max_sequence_idle_microseconds: 5000000",
                                        "max_sequence_idle_microseconds: 50000")
    async with serving(model_dir=repository(tmp_path, config)) as client:
        started = await client.post(f"/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=9, sequence_start=True))
        await asyncio.sleep(0.2)  # past its 50 ms
        late = await client.post(f"/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=9))
    assert started.status_code == 200
    assert late.status_code == 400
    assert "idle for 50 ms" in late.json()["error"]


async def test_the_configuration_is_said_back_in_tritons_words(tmp_path: Path) -> None:
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2
    from tritonclient.grpc import service_pb2 as pb

    async with serving_grpc(model_dir=repository(tmp_path)) as (client, stub, _):
        config = (await client.get(f"/v2/models/{MODEL}/config")).json()
        over_grpc = (await stub.ModelConfig(pb.ModelConfigRequest(name=MODEL))).config
    said = config["sequence_batching"]
    assert "dynamic_batching" not in config
    assert said["max_sequence_idle_microseconds"] == 5_000_000
    assert said["oldest"]["max_candidate_sequences"] == 16
    assert [(c["name"], c["control"][0]["kind"]) for c in said["control_input"]] == [
        ("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"), ("READY", "CONTROL_SEQUENCE_READY"),
        ("CORRID", "CONTROL_SEQUENCE_CORRID")]
    assert said["state"] == [{"input_name": "acc_in", "output_name": "acc_out", "data_type": "TYPE_FP32", "dims": [1]}]
    # read back through Triton's own schema, it is the configuration given
    given = model_config_pb2.ModelConfig()
    json_format.Parse(json.dumps(config), given, ignore_unknown_fields=True)
    assert given.sequence_batching == over_grpc.sequence_batching
    assert from_triton_text(f"max_batch_size: 8\n{model_config_pb2.ModelConfig(sequence_batching=given.sequence_batching)}",
                            MODEL, "said back").sequence == from_triton_text(ACCUMULATOR_CONFIG, MODEL, "given").sequence


async def test_sequences_over_grpc_and_a_config_json(tmp_path: Path) -> None:
    from tritonclient.grpc import service_pb2 as pb

    save(tmp_path, MODEL, accumulator())
    (tmp_path / MODEL / "config.json").write_text(json.dumps({"batching": {"max_batch_size": 4, "max_queue_delay_ms": 1},
        "sequence": {"controls": [{"input": "START", "kind": "start", "datatype": "INT32", "false_true": [0, 1]},
                                  {"input": "END", "kind": "end", "datatype": "INT32", "false_true": [0, 1]},
                                  {"input": "READY", "kind": "ready", "datatype": "INT32", "false_true": [0, 1]},
                                  {"input": "CORRID", "kind": "correlation_id", "datatype": "UINT64"}],
                     "states": [{"input": "acc_in", "output": "acc_out", "datatype": "FP32", "shape": [1]}]}}))

    def request(x: float, start: bool = False, end: bool = False) -> Any:
        message = pb.ModelInferRequest(model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, 1], contents=pb.InferTensorContents(fp32_contents=[x]))])
        message.parameters["sequence_id"].uint64_param = 12  # as tritonclient.grpc sends them
        message.parameters["sequence_start"].bool_param = start
        message.parameters["sequence_end"].bool_param = end
        return message

    async with serving_grpc(model_dir=tmp_path) as (_, stub, _):
        answers = [await stub.ModelInfer(request(x, start=i == 0, end=i == 2)) for i, x in enumerate([1.0, 2.0, 3.0])]
    totals = [np.frombuffer(a.raw_output_contents[0], dtype=np.float32)[0] for a in answers]
    corrids = [np.frombuffer(a.raw_output_contents[4], dtype=np.uint64)[0] for a in answers]
    assert totals == [1.0, 3.0, 6.0]
    assert corrids == [12, 12, 12]


def test_tritonclient_runs_a_sequence_over_http_and_grpc(tmp_path: Path) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    repository(tmp_path)
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "1"]) as server:
        clients = {"http": (triton_http, triton_http.InferenceServerClient(server.url.removeprefix("http://"))),
                   "grpc": (triton_grpc, triton_grpc.InferenceServerClient(server.grpc_target))}
        totals: dict[str, list[float]] = {}
        for name, (module, client) in clients.items():
            totals[name] = []
            for i, x in enumerate([2.0, 3.0, 4.0]):
                given = module.InferInput("x", [1, 1], "FP32")
                given.set_data_from_numpy(np.array([[x]], dtype=np.float32))
                answer = client.infer(MODEL, [given], sequence_id=77 if name == "http" else 78,
                                      sequence_start=i == 0, sequence_end=i == 2)
                totals[name].append(float(answer.as_numpy("total")[0, 0]))
    assert totals == {"http": [2.0, 5.0, 9.0], "grpc": [2.0, 5.0, 9.0]}


@pytest.mark.parametrize(("change", "why"), [
    (("max_batch_size: 8", "max_batch_size: 0"), "sequence_batching with max_batch_size 0"),
    (("max_sequence_idle", "iterative_sequence: true max_sequence_idle"), "iterative_sequence"),
    (('dims: [ 1 ] }', 'dims: [ 1 ] initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "s" } }'),
     "initial_state from a data file is not served"),
    (("int32_false_true: [ 0, 1 ] } ] },\n    { name: \"END\"", "} ] },\n    { name: \"END\""),
     "a start control gives its false and true values once"),
    (('kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }', 'kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] '
      '}, { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }'), "one control per input"),
    (("data_type: TYPE_UINT64", "data_type: TYPE_FP32"), "a correlation ID is UINT64, INT64, UINT32, INT32 or BYTES"),
])
def test_sequence_configurations_that_cannot_be_served_are_refused(change: tuple[str, str], why: str) -> None:
    assert change[0] in ACCUMULATOR_CONFIG
    with pytest.raises(FactsError, match=why):
        from_triton_text(ACCUMULATOR_CONFIG.replace(*change), MODEL, "config.pbtxt")


async def test_a_state_the_graph_does_not_make_leaves_the_model_unavailable_saying_why(tmp_path: Path) -> None:
    repository(tmp_path, ACCUMULATOR_CONFIG.replace('output_name: "acc_out"', 'output_name: "acc_next"'))
    async with serving(model_dir=tmp_path) as client:
        ready = await client.get(f"/v2/models/{MODEL}/ready")
    assert ready.status_code == 503
    assert "state 'acc_in': its output 'acc_next' is not in the graph" in ready.json()["error"]


async def test_a_load_with_a_sequence_configuration_serves_the_model_so(tmp_path: Path) -> None:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    save(tmp_path, MODEL, accumulator())  # no configuration: every graph input is a client's
    config = json_format.MessageToJson(text_format.Parse(ACCUMULATOR_CONFIG, model_config_pb2.ModelConfig()))
    admin = {"Authorization": "Bearer session-token"}
    async with serving(model_dir=tmp_path, admin_token="session-token", model_control_mode="explicit",
                       load_model=[MODEL]) as client:
        before = (await client.get(f"/v2/models/{MODEL}")).json()
        loaded = await client.post(f"/v2/repository/models/{MODEL}/load", headers=admin,
                                   json={"parameters": {"config": config}})
        after = (await client.get(f"/v2/models/{MODEL}")).json()
        totals = [outputs(await client.post(f"/v2/models/{MODEL}/infer", json=step(
            x, sequence_id=3, sequence_start=i == 0)))["total"] for i, x in enumerate([1.0, 1.5])]
    assert len(before["inputs"]) == 6
    assert loaded.status_code == 200, loaded.text
    assert [t["name"] for t in after["inputs"]] == ["x"]
    assert totals == [1.0, 2.5]


async def test_a_warm_up_sample_gives_clients_inputs_and_the_server_fills_the_rest(tmp_path: Path) -> None:
    sample = 'model_warmup [ { name: "first" batch_size: 2 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 1 ] ' \
             'random_data: true } } } ]\n'
    repository(tmp_path, ACCUMULATOR_CONFIG + sample)
    async with serving(model_dir=tmp_path) as client:
        answer = await client.post(f"/v2/models/{MODEL}/infer", json=step(2.0, sequence_id=1, sequence_start=True))
    assert outputs(answer)["total"] == 2.0  # loaded: warmed up on the sample's first steps


async def test_a_streams_messages_of_one_sequence_run_in_their_order_however_long_each_takes_to_read(
        tmp_path: Path) -> None:
    """Triton's clients stream a sequence's steps (tritonclient.grpc's async_stream_infer): the
    steps run in the order sent, even where one is decoded off the event loop (a body of over
    256 KiB) and the next, small, would be read sooner."""
    from tritonclient.grpc import service_pb2 as pb

    def message(x: float, start: bool = False, padding: int = 0) -> Any:
        request = pb.ModelInferRequest(model_name=MODEL, id=f"{x:g}", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, 1], contents=pb.InferTensorContents(fp32_contents=[x]))])
        request.parameters["sequence_id"].uint64_param = 21
        request.parameters["sequence_start"].bool_param = start
        if padding:  # a parameter the server does not read, making the message large
            request.parameters["padding"].string_param = "p" * padding
        return request

    async def steps() -> Any:
        yield message(1.0, start=True)
        yield message(2.0, padding=300_000)
        for x in (4.0, 8.0):
            yield message(x)

    totals = {}
    async with serving_grpc(model_dir=repository(tmp_path)) as (_, stub, _):
        async for reply in stub.ModelStreamInfer(steps()):
            assert not reply.error_message, reply.error_message
            totals[reply.infer_response.id] = float(np.frombuffer(reply.infer_response.raw_output_contents[0],
                                                                  dtype=np.float32)[0])
    assert totals == {"1": 1.0, "2": 3.0, "4": 7.0, "8": 15.0}


async def test_the_metrics_count_each_versions_active_sequences(tmp_path: Path) -> None:
    async with serving(model_dir=repository(tmp_path)) as client:
        for n in (1, 2, 3):
            await client.post(f"/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=n, sequence_start=True))
        three = (await client.get("/metrics")).text
        await client.post(f"/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=2, sequence_end=True))
        two = (await client.get("/metrics")).text
    gauge = f'ortserve_sequences_active{{model="{MODEL}",version="1"}}'
    assert f"{gauge} 3.0" in three
    assert f"{gauge} 2.0" in two


async def test_a_requests_sequence_is_in_its_access_log_line_and_its_trace(tmp_path: Path) -> None:
    from tests.app.observability.test_access_log import Captured
    from tests.app.observability.test_tracing import Recorded

    captured, recorded, apps = Captured(), Recorded(), []
    async with serving(apps.append, model_dir=repository(tmp_path), access_log=True, log_format="json",
                       tracing=True) as client:
        captured.install(apps[0])
        recorded.install(apps[0])
        answer = await client.post(f"/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=31, sequence_start=True),
                                   headers={"x-request-id": "step-1"})
    assert answer.status_code == 200, answer.text
    [entry] = [e for e in captured.entries() if e["request_id"] == "step-1"]
    assert entry["sequence_id"] == 31
    [request] = recorded.requests()
    assert dict(recorded.children(request)["queue"].attributes or {})["sequence_id"] == 31


def growing() -> Any:
    """A state that grows: each step appends its x to its sequence's history (acc_in -> acc_out,
    [n, -1]) and answers the history's mean, which zero padding would change."""
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    return helper.make_graph(
        [helper.make_node("Concat", ["acc_in", "x"], ["acc_out"], axis=1),
         helper.make_node("ReduceMean", ["acc_out"], ["mean"], axes=[1], keepdims=1)],
        "growing", [helper.make_tensor_value_info("x", f32, ["n", 1]),
                    helper.make_tensor_value_info("acc_in", f32, ["n", "steps"])],
        [helper.make_tensor_value_info("mean", f32, ["n", 1]), helper.make_tensor_value_info("acc_out", f32, ["n", "t"])])


GROWING = """
max_batch_size: 8
sequence_batching {
  oldest { max_queue_delay_microseconds: 20000 }
  state [ { input_name: "acc_in" output_name: "acc_out" data_type: TYPE_FP32 dims: [ -1 ] } ]
}
"""


async def test_a_state_that_grows_is_never_padded_to_another_sequences_length(tmp_path: Path) -> None:
    save(tmp_path, "growing", growing())
    (tmp_path / "growing" / "config.pbtxt").write_text(GROWING)
    async with serving(model_dir=tmp_path) as client:
        async def send(x: float, sequence_id: int, start: bool = False) -> float:
            answer = await client.post("/v2/models/growing/infer", json=step(x, sequence_id=sequence_id,
                                                                             sequence_start=start))
            return float(outputs(answer)["mean"])
        assert [await send(x, 1, start=x == 2.0) for x in (2.0, 4.0, 6.0)] == [2.0, 3.0, 4.0]
        # a fourth step of one and a first of another, together: states of 3 and of 0 values
        four, first = await asyncio.gather(send(8.0, 1), send(10.0, 2, start=True))
    assert (four, first) == (5.0, 10.0)


def at_once(client: Callable[[int], None], sequence_ids: Iterable[int]) -> None:
    """Each sequence's client in a thread of its own, all at once; their errors raised."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        for done in [pool.submit(client, n) for n in sequence_ids]:
            done.result(timeout=120)


def test_with_two_workers_a_sequence_over_one_connection_stays_with_its_worker(tmp_path: Path) -> None:
    """As the README says: a sequence lives in the worker that served its start, and a client
    that keeps its connection (tritonclient's do) reaches that worker for every step. Eight
    clients at once: the kernel spreads their connections over the workers."""
    import tritonclient.http as triton_http

    repository(tmp_path)
    totals: dict[int, list[float]] = {}
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "2"]) as server:
        def client(sequence_id: int) -> None:
            connection = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
            seen = []
            for i in range(10):
                given = triton_http.InferInput("x", [1, 1], "FP32")
                given.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
                answer = connection.infer(MODEL, [given], sequence_id=sequence_id, sequence_start=i == 0,
                                          sequence_end=i == 9)
                seen.append(float(answer.as_numpy("total")[0, 0]))
            connection.close()
            totals[sequence_id] = seen
        at_once(client, range(1, 9))
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert totals == {n: [float(k) for k in range(1, 11)] for n in range(1, 9)}
    assert f'ortserve_sequences_active{{model="{MODEL}",version="1"}} 0.0' in metrics  # every one ended


def test_with_two_workers_a_sequences_steps_reach_it_over_any_connection(tmp_path: Path) -> None:
    """A client that opens a connection for each request (curl, a client without a session, a
    proxy pooling its own connections) reaches either worker at each step: the worker that holds
    the sequence runs it (app/sequence_peers.py), whichever took it. Over HTTP and gRPC, a new
    connection every step, six sequences at once; one restarted midway over whatever connection,
    and one stepped after its end."""
    import tritonclient.grpc as triton_grpc

    repository(tmp_path)
    totals: dict[int, list[float]] = {}
    errors: list[str] = []
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "2"]) as server:
        def over_http(sequence_id: int, x: float, **flags: bool) -> float:
            answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", timeout=30,
                                json=step(x, sequence_id=sequence_id, **flags))  # a new connection each time
            if answer.status_code != 200:
                errors.append(answer.text)
                return float("nan")
            return float(outputs(answer)["total"])

        def over_grpc(sequence_id: int, x: float, **flags: bool) -> float:
            client = triton_grpc.InferenceServerClient(server.grpc_target)  # a new channel each time
            given = triton_grpc.InferInput("x", [1, 1], "FP32")
            given.set_data_from_numpy(np.array([[x]], dtype=np.float32))
            try:
                answer = client.infer(MODEL, [given], sequence_id=sequence_id, sequence_start=flags.get(
                    "sequence_start", False), sequence_end=flags.get("sequence_end", False))
            finally:
                client.close()
            return float(answer.as_numpy("total")[0, 0])

        def client(sequence_id: int) -> None:
            send = over_grpc if sequence_id > 4 else over_http
            seen = [send(sequence_id, 1.0, sequence_start=True)]
            seen += [send(sequence_id, 1.0, sequence_end=k == 12) for k in range(1, 13)]
            totals[sequence_id] = seen
        at_once(client, range(1, 7))
        # started again over new connections, wherever they land: the old one is forgotten everywhere
        restarted = [over_http(9, 5.0, sequence_start=True) for _ in range(6)] + [over_http(9, 1.0) for _ in range(4)]
        after_end = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=1), timeout=30)
        active = f'ortserve_sequences_active{{model="{MODEL}",version="1"}} 1.0'  # sequence 9, not ended
        for _ in range(300):  # each worker's metrics reach the others within a second (app/observability/workers.py)
            metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
            if active in metrics:
                break
            time.sleep(0.1)
    assert not errors
    assert totals == {n: [float(k) for k in range(1, 14)] for n in range(1, 7)}
    assert restarted == [5.0] * 6 + [6.0, 7.0, 8.0, 9.0]
    assert after_end.status_code == 400
    assert "sequence 1 of model 'accumulator' is not active (no worker of the server holds it)" in \
        after_end.json()["error"]
    assert active in metrics
    forwarded = sample_total(metrics, "ortserve_sequence_steps_elsewhere_total", model=MODEL)
    assert 0 < forwarded < 6 * 13 + 10  # a new connection per step: some landed on the other worker


async def test_states_that_grow_are_bounded_and_the_sequence_that_passes_the_bound_is_ended(tmp_path: Path) -> None:
    save(tmp_path, "growing", growing())
    (tmp_path / "growing" / "config.pbtxt").write_text(GROWING.replace("20000", "0"))
    async with serving(model_dir=tmp_path, max_queue_bytes=200) as client:  # 50 float32 values kept at most
        async def send(sequence_id: int, start: bool = False) -> Any:
            return await client.post("/v2/models/growing/infer", json=step(1.0, sequence_id=sequence_id,
                                                                           sequence_start=start))
        first = [(await send(1, start=i == 0)).status_code for i in range(30)]  # 120 bytes kept
        second = [await send(2, start=i == 0) for i in range(21)]  # 84 more would make 204
        after = await send(2)
        first_goes_on = await send(1)
    assert set(first) == {200}
    assert {a.status_code for a in second[:20]} == {200}
    assert second[20].status_code == 503
    assert "sequence 2's state grew to 84 bytes" in second[20].json()["error"]
    assert "the sequence is ended" in second[20].json()["error"]
    assert after.status_code == 400  # ended
    assert first_goes_on.status_code == 200  # the other keeps its state (124 bytes now, with room)
    assert outputs(first_goes_on)["mean"] == 1.0


async def test_a_step_sent_after_its_sequences_end_is_refused_though_the_end_has_not_run_yet(tmp_path: Path) -> None:
    async with serving(model_dir=repository(tmp_path)) as client:
        started = await client.post(f"/v2/models/{MODEL}/infer", json=step(1.0, sequence_id=8, sequence_start=True))
        ended, late = await asyncio.gather(
            client.post(f"/v2/models/{MODEL}/infer", json=step(2.0, sequence_id=8, sequence_end=True)),
            client.post(f"/v2/models/{MODEL}/infer", json=step(4.0, sequence_id=8)))
        again = await client.post(f"/v2/models/{MODEL}/infer", json=step(5.0, sequence_id=8, sequence_start=True))
    assert outputs(started)["total"] == 1.0
    assert outputs(ended)["total"] == 3.0  # the end runs on the state its sequence left
    assert late.status_code == 400
    assert "is not active" in late.json()["error"]
    assert outputs(again)["total"] == 5.0  # its ID starts a new sequence
