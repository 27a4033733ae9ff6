"""Triton's file overrides: a load that carries the model's files (`file:1/model.onnx`
parameters beside its `config`, as tritonclient's `load_model(name, config=..., files=...)`
sends them over HTTP and gRPC) serves those files, with that configuration, whether or not
the model is in the model directory; a load without files reads the directory again. The
files are checked, kept while served, and removed once replaced."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from load_tests.server import ServerProcess
from tests.app.conftest import serving
from tests.app.onnx_models import mlp, mlp_with_softmax, reference, save
from tests.app.repository.calls import ADMIN, TOKEN, index

CONFIG = json.dumps({"max_batch_size": 8, "dynamic_batching": {}})
EXPLICIT = {"model_control_mode": "explicit", "admin_token": TOKEN}


def graph_file(root: Path, graph: Any, name: str = "made") -> Path:
    return save(root, name, graph)


def features(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)


def v2(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def load_body(files: dict[str, bytes], config: str | None = CONFIG) -> dict[str, Any]:
    parameters: dict[str, Any] = {key: base64.b64encode(value).decode() for key, value in files.items()}
    if config is not None:
        parameters["config"] = config
    return {"parameters": parameters}


def staged(uploads: Path) -> list[str]:
    """The uploads kept now: each a folder holding one model's files."""
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


@pytest.mark.server
def test_tritonclient_loads_a_model_from_its_files_over_http_and_grpc(tmp_path: Path) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    source = graph_file(tmp_path / "elsewhere", mlp())
    (tmp_path / "models").mkdir()  # empty: the models come with their loads
    x = features()
    expected = reference(source, {"features": x})["scores"]
    args = ["--model-dir", str(tmp_path / "models"), "--workers", "1", "--model-control-mode", "explicit",
            "--admin-token", TOKEN]
    with ServerProcess(args) as server:
        http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        http.load_model("sent-over-http", headers=ADMIN, config=CONFIG,
                        files={"file:1/model.onnx": source.read_bytes()})
        grpc = triton_grpc.InferenceServerClient(server.grpc_target)
        grpc.load_model("sent-over-grpc", headers={"authorization": ADMIN["Authorization"]}, config=CONFIG,
                        files={"file:1/model.onnx": source.read_bytes()})
        answers = {}
        for name in ("sent-over-http", "sent-over-grpc"):
            given = triton_http.InferInput("features", list(x.shape), "FP32")
            given.set_data_from_numpy(x)
            answers[name] = http.infer(name, [given]).as_numpy("scores")
        config = http.get_model_config("sent-over-http")
        listed = {(e["name"], e["state"]) for e in http.get_model_repository_index(headers=ADMIN)}
        # a load without files reads the model directory, where there is no such model: the
        # uploaded version serves on
        with pytest.raises(triton_http.InferenceServerException, match="no model 'sent-over-http'"):
            http.load_model("sent-over-http", headers=ADMIN)
        still = http.is_model_ready("sent-over-http")
        http.unload_model("sent-over-grpc", headers=ADMIN)
        gone = http.is_model_ready("sent-over-grpc")
    for name, answer in answers.items():
        np.testing.assert_allclose(answer, expected, rtol=1e-5, err_msg=name)
    assert config["max_batch_size"] == 8
    assert listed >= {("sent-over-http", "READY"), ("sent-over-grpc", "READY")}
    assert still
    assert not gone


@pytest.mark.parametrize(("key", "value", "message"), [
    ("file:../1/model.onnx", b"x", "names a file inside a version folder of the model"),
    ("file:/etc/model.onnx", b"x", "names a file inside a version folder of the model"),
    ("file:model.onnx", b"x", "names a file inside a version folder of the model"),
    ("file:1/../../model.onnx", b"x", "names a file inside a version folder of the model"),
    ("file:v1/model.onnx", b"x", "its first folder must be a version number"),
    ("file:1/model.onnx", None, "not base64"),
])
async def test_files_that_are_not_a_version_folders_are_refused(tmp_path: Path, key: str, value: bytes | None,
                                                                message: str) -> None:
    body = load_body({key: value or b""})
    if value is None:
        body["parameters"][key] = "not base64!"
    async with serving(model_dir=tmp_path, **EXPLICIT) as client:
        refused = await client.post("/v2/repository/models/sent/load", headers=ADMIN, json=body)
        listed = await index(client)
    assert refused.status_code == 400
    assert message in refused.json()["error"]
    assert not listed


async def test_an_upload_replaced_is_removed_and_one_that_fails_leaves_the_last_serving(tmp_path: Path) -> None:
    plain, softmax = graph_file(tmp_path / "a", mlp()), graph_file(tmp_path / "b", mlp_with_softmax())
    save(tmp_path / "models", "sent", mlp())  # also in the model directory: a load without files reads it
    x = features(2)
    apps: list[Any] = []
    async with serving(apps.append, model_dir=tmp_path / "models", **EXPLICIT) as client:
        uploads = apps[0].services.changes.uploads.root
        first = await client.post("/v2/repository/models/sent/load", headers=ADMIN,
                                  json=load_body({"file:1/model.onnx": plain.read_bytes()}))
        kept_first = staged(uploads)
        second = await client.post("/v2/repository/models/sent/load", headers=ADMIN,
                                   json=load_body({"file:1/model.onnx": softmax.read_bytes()}))
        kept_second = staged(uploads)
        answered = await client.post("/v2/models/sent/infer", json=v2(x))
        broken = await client.post("/v2/repository/models/sent/load", headers=ADMIN,
                                   json=load_body({"file:1/model.onnx": b"not a graph"}))
        after_broken = await client.post("/v2/models/sent/infer", json=v2(x))
        kept_after_broken = staged(uploads)
        from_folder = await client.post("/v2/repository/models/sent/load", headers=ADMIN)
        kept_last = staged(uploads)
    assert [r.status_code for r in (first, second, from_folder)] == [200, 200, 200], (first.text, second.text)
    assert len(kept_first) == len(kept_second) == 1
    assert kept_first != kept_second  # the first upload went when the second replaced it
    expected = reference(softmax, {"features": x})["probabilities"]
    np.testing.assert_allclose(answered.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-5)
    assert broken.status_code == 400
    why = broken.json()["error"]
    assert why.startswith("model 'sent': version 1 failed to load: ")
    assert "ONNX Runtime cannot load model.onnx: InvalidProtobuf" in why
    assert why.endswith("serving ['1']")
    assert after_broken.json()["outputs"][0]["name"] == "probabilities"  # the last upload serves on
    assert kept_after_broken == kept_second
    assert kept_last == []  # read from the model directory again: nothing kept
    assert not uploads.exists() or not any(uploads.iterdir())


@pytest.mark.server
def test_an_upload_reaches_every_worker_and_goes_when_replaced(tmp_path: Path) -> None:
    from tests.app.test_workers import reports

    source = graph_file(tmp_path / "elsewhere", mlp())
    (tmp_path / "models").mkdir()
    control = tmp_path / "control"
    x = features(1)
    args = ["--model-dir", str(tmp_path / "models"), "--workers", "2", "--model-control-mode", "explicit",
            "--admin-token", TOKEN, "--control-dir", str(control), "--no-warmup"]
    with ServerProcess(args) as server:
        body = load_body({"file:1/model.onnx": source.read_bytes()})
        loaded = httpx.post(f"{server.url}/v2/repository/models/sent/load", headers=ADMIN, json=body, timeout=120)
        assert loaded.status_code == 200, loaded.text
        serving_now = [r["serving"] for r in reports(control).values()]
        first = staged(control / "uploads")
        # fresh connections: the kernel spreads them over both workers
        answers = [httpx.post(f"{server.url}/v2/models/sent/infer", json=v2(x), timeout=30) for _ in range(16)]
        again = httpx.post(f"{server.url}/v2/repository/models/sent/load", headers=ADMIN, json=body, timeout=120)
        second = staged(control / "uploads")
    assert serving_now == [{"sent": ["1"]}] * 2
    assert [a.status_code for a in answers] == [200] * 16
    expected = reference(source, {"features": x})["scores"]
    np.testing.assert_allclose(answers[-1].json()["outputs"][0]["data"], expected.ravel(), rtol=1e-5)
    assert again.status_code == 200, again.text
    assert len(first) == len(second) == 1
    assert first != second


async def test_a_bad_model_name_is_refused_before_any_file_is_written() -> None:
    from tritonclient.grpc import service_pb2 as pb

    from tests.app.conftest import serving_grpc

    async with serving_grpc(model_dir=Path(__file__).parents[3] / "models", **EXPLICIT) as (_, stub, app):
        request = pb.RepositoryModelLoadRequest(model_name="../escaped")
        request.parameters["config"].string_param = CONFIG
        request.parameters["file:1/model.onnx"].bytes_param = b"\x08\x07"
        with pytest.raises(Exception, match="is not a model name") as refused:
            await stub.RepositoryModelLoad(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
        root = app.services.changes.uploads._root
    assert "INVALID_ARGUMENT" in str(refused.value)
    assert root is None  # nothing was written anywhere



def test_a_file_and_a_folder_of_the_same_name_are_refused() -> None:
    from app.errors import InvalidInput
    from app.repository.uploads import uploaded_files

    with pytest.raises(InvalidInput, match="one is a file, the other puts a file inside it"):
        uploaded_files({"config": "{}", "file:1/model.onnx": b"x", "file:1/model.onnx/data": b"y"})
    assert uploaded_files({"config": "{}", "file:1//model.onnx": b"x", "other": 1}) == {"1/model.onnx": b"x"}


async def test_a_model_whose_weights_are_external_data_is_sent_with_them(tmp_path: Path) -> None:
    """An exporter's large graph: model.onnx and its weights in a file beside it, both sent."""
    source = save(tmp_path / "a", "made", mlp(), external_data="weights.bin")
    files = {"file:1/model.onnx": source.read_bytes(),
             "file:1/weights.bin": (source.parent / "weights.bin").read_bytes()}
    x = features(2)
    (tmp_path / "models").mkdir()
    async with serving(model_dir=tmp_path / "models", **EXPLICIT) as client:
        without = await client.post("/v2/repository/models/sent/load", headers=ADMIN,
                                    json=load_body({"file:1/model.onnx": files["file:1/model.onnx"]}))
        loaded = await client.post("/v2/repository/models/sent/load", headers=ADMIN, json=load_body(files))
        answered = await client.post("/v2/models/sent/infer", json=v2(x))
    assert without.status_code == 400  # its weights are not there
    assert loaded.status_code == 200, loaded.text
    expected = reference(source, {"features": x})["scores"]
    np.testing.assert_allclose(answered.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-5)


def test_whatever_file_parameters_come_the_files_land_inside_a_version_folder_or_are_refused(tmp_path: Path) -> None:
    """Any keys and values a client could send: a 400 (InvalidInput), or files written only
    inside the upload's version folders."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from app.errors import InvalidInput
    from app.repository.uploads import Uploads, uploaded_files

    part = st.sampled_from(["1", "2", "..", ".", "", "model.onnx", "a b", "\\\\x", "~", "0001", "x" * 300, "é"])
    key = st.builds(lambda lead, first, rest: "file:" + lead + "/".join([first, *rest]),
                    st.sampled_from(["", "", "", "/", "./", "../"]), st.sampled_from(["1", "2", "0001", "..", "v1"]),
                    st.lists(part, max_size=4))
    value = st.one_of(st.binary(max_size=4), st.sampled_from(["CAc=", "not base64", ""]), st.integers(), st.none())
    uploads = Uploads(tmp_path / "uploads")

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(parameters=st.dictionaries(key, value, max_size=3), with_config=st.sampled_from([True, True, False]))
    @example(parameters={"file:1/model.onnx": b"x", "file:2/a/b": "CAc="}, with_config=True)  # staged, always
    @example(parameters={"file:1/../../escaped": b"x"}, with_config=True)
    def check(parameters: dict[str, object], with_config: bool) -> None:
        sent = parameters | ({"config": "{}"} if with_config else {})
        try:
            files = uploaded_files(sent)
        except InvalidInput:  # a 400
            return
        if not files:
            return
        folder = uploads.stage("m", files)  # whatever passed the checks can be written
        for path in files:
            written = (folder / path).resolve()
            assert written.is_file()
            assert written.is_relative_to(folder.resolve())
            assert written.relative_to(folder.resolve()).parts[0].isdigit()
        uploads.discard(folder)

    check()
    assert list((tmp_path / "uploads").iterdir()) == []  # every staged upload removed, nothing written beside
