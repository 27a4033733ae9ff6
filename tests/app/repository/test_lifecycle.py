"""Model lifecycle: states, control modes, version policy, faults that leave the other models
serving, a replace under load without a failed request, and the repository API's access rules."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import shutil
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import NoModelsFound
from tests.app.conftest import copy_model, serving
from tests.app.repository.calls import ADMIN, IMAGE, TEXT, TOKEN, index
from tests.conftest import model_folder


def explicit(**overrides: Any) -> dict[str, Any]:
    return {"model_control_mode": "explicit", "admin_token": TOKEN} | overrides


def fashion_version(root: Path) -> str:
    return next(p.name for p in (root / "fashion-cnn").iterdir())


# --- states and control modes ------------------------------------------------------------

async def test_explicit_mode_loads_only_what_it_is_told_and_reports_each_state(model_root: Path) -> None:
    async with serving(model_dir=model_root, **explicit(load_model=["sst2-lstm"])) as client:
        v = fashion_version(model_root)
        before = await index(client)
        assert before[("sst2-lstm", model_folder("sst2-lstm").name)]["state"] == "READY"
        assert before[("fashion-cnn", v)] == {"name": "fashion-cnn", "version": v, "state": "UNAVAILABLE",
                                              "reason": "not loaded"}
        assert (await client.get("/v2/health/ready")).status_code == 200  # nothing else should be served
        not_served = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
        assert not_served.status_code == 503
        assert "not loaded" in not_served.json()["error"]

        assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 200
        assert (await index(client))[("fashion-cnn", v)]["state"] == "READY"
        assert (await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)).status_code == 200
        assert (await client.get("/v2/models/fashion-cnn/ready")).status_code == 200

        assert (await client.post("/v2/repository/models/fashion-cnn/unload", headers=ADMIN,
                                  json={"parameters": {"unload_dependents": False}})).status_code == 200
        after = (await index(client))[("fashion-cnn", v)]
        assert (after["state"], after["reason"]) == ("UNAVAILABLE", "unloaded")
        assert (await client.get("/v2/models/fashion-cnn/ready")).status_code == 503
        ready_only = await client.post("/v2/repository/index", headers=ADMIN, json={"ready": True})
        assert {e["name"] for e in ready_only.json()} == {"sst2-lstm"}
        unknown = await client.post("/v2/repository/models/nope/load", headers=ADMIN)
        assert unknown.status_code == 404
        assert "no model 'nope'" in unknown.json()["error"]
        # Triton's file overrides come with the configuration they are served with, or not at all
        with_file = await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN,
                                      json={"parameters": {"file:1/model.onnx": "CAc="}})
        assert with_file.status_code == 400
        assert "files (file:...) need the model's configuration beside them" in with_file.json()["error"]
        assert (await index(client))[("fashion-cnn", v)]["state"] == "UNAVAILABLE"


async def test_explicit_mode_star_loads_everything(model_root: Path) -> None:
    async with serving(model_dir=model_root, **explicit(load_model=["*"])) as client:
        assert {e["state"] for e in (await index(client)).values()} == {"READY"}


async def test_none_mode_serves_everything_and_refuses_changes_with_403(model_root: Path) -> None:
    async with serving(model_dir=model_root, admin_token=TOKEN) as client:
        assert {e["state"] for e in (await index(client)).values()} == {"READY"}
        for action in ("load", "unload"):
            response = await client.post(f"/v2/repository/models/sst2-lstm/{action}", headers=ADMIN)
            assert response.status_code == 403
            assert "explicit model control mode" in response.json()["error"]
        assert "model_repository" in (await client.get("/v2")).json()["extensions"]


# --- access ------------------------------------------------------------------------------

async def test_repository_api_is_off_without_a_token_and_checks_it_when_on(model_root: Path, tmp_path: Path) -> None:
    async with serving(model_dir=model_root) as client:
        off = await client.post("/v2/repository/index")
        assert off.status_code == 403
        assert "ORTSERVE_ADMIN_TOKEN" in off.json()["error"]
    secret = tmp_path / "admin-token"
    secret.write_text(TOKEN + "\n")
    async with serving(model_dir=model_root, model_control_mode="explicit", admin_token_file=secret) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            response = await client.post("/v2/repository/index", headers=headers)
            assert response.status_code == 401, headers
            assert "admin token" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.post("/v2/repository/index", headers=ADMIN)).status_code == 200


async def test_the_admin_token_is_never_logged(model_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with serving(model_dir=model_root, **explicit()) as client:
        await client.post("/v2/repository/models/sst2-lstm/load", headers=ADMIN)
        await client.post("/v2/repository/index", headers={"Authorization": "Bearer guess"})
    assert TOKEN not in caplog.text
    assert "guess" not in caplog.text


async def test_api_keys_guard_the_inference_endpoints_when_configured(model_root: Path) -> None:
    async with serving(model_dir=model_root, api_keys=["k1", "k2"]) as client:
        missing = await client.post("/v1/models/sst2-lstm:predict", json=TEXT)
        wrong = await client.post("/v1/models/sst2-lstm:predict", json=TEXT, headers={"Authorization": "Bearer k3"})
        right = await client.post("/v1/models/sst2-lstm:predict", json=TEXT, headers={"Authorization": "Bearer k2"})
        v2 = await client.post("/v2/models/sst2-lstm/infer", json={"inputs": []})
    assert missing.status_code == wrong.status_code == v2.status_code == 401
    assert "API key" in missing.json()["error"]
    assert right.status_code == 200


# --- version policy ----------------------------------------------------------------------

async def test_version_policy_decides_what_is_served_and_config_reports_it(model_root: Path) -> None:
    old = fashion_version(model_root)
    new = str(int(old) + 1)
    copy_model(model_root, "fashion-cnn", int(new), model_root / "fashion-cnn" / old)
    async with serving(model_dir=model_root) as client:  # default: latest 1
        meta = (await client.get("/v2/models/fashion-cnn")).json()
        config = (await client.get("/v2/models/fashion-cnn/config")).json()
        assert meta["versions"] == [new]
        assert config["version_policy"] == {"latest": {"num_versions": 1}}
        assert (await client.get(f"/v2/models/fashion-cnn/versions/{old}/ready")).status_code == 404
    async with serving(model_dir=model_root, version_policy="all") as client:
        meta = (await client.get("/v2/models/fashion-cnn")).json()
        assert meta["versions"] == [old, new]
        assert (await client.get("/v2/models/fashion-cnn/config")).json()["version_policy"] == {"all": {}}
        plain = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
        assert plain.json()["model_version"] == new  # no version: the newest served
        pinned = await client.post(f"/v2/models/fashion-cnn/versions/{old}/infer", json=_v2_zeros())
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["model_version"] == old
        stats = (await client.get("/v2/models/fashion-cnn/stats")).json()["model_stats"]
        assert [s["version"] for s in stats] == [old, new]
    # the newest manifest's own policy wins over the server's
    manifest_path = model_root / "fashion-cnn" / new / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version_policy"] = {"kind": "specific", "versions": [int(old)]}
    manifest_path.write_text(json.dumps(manifest))
    async with serving(model_dir=model_root) as client:
        assert (await client.get("/v2/models/fashion-cnn")).json()["versions"] == [old]
        assert (await client.get("/v2/models/fashion-cnn/config")).json()["version_policy"] == {
            "specific": {"versions": [int(old)]}}


def _v2_zeros() -> dict[str, Any]:
    return {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}


# --- faults ------------------------------------------------------------------------------

def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def missing_file(folder: Path) -> None:
    (folder / _manifest(folder)["variants"]["fp32"]["file"]).unlink()


def checksum_mismatch(folder: Path) -> None:
    path = folder / _manifest(folder)["variants"]["fp32"]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupt_onnx(folder: Path) -> None:
    """Garbage whose checksum the manifest agrees with: only ONNX Runtime can tell."""
    manifest = _manifest(folder)
    path = folder / manifest["variants"]["fp32"]["file"]
    path.write_bytes(b"not an onnx graph" * 100)
    manifest["variants"]["fp32"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["variants"]["fp32"]["size_bytes"] = path.stat().st_size
    _write_manifest(folder, manifest)


def invalid_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text('{"name": "fashion-cnn", "version": ')


def wrong_name(folder: Path) -> None:
    manifest = _manifest(folder)
    manifest["name"] = "another-name"
    _write_manifest(folder, manifest)


def disagrees_with_the_graph(folder: Path) -> None:
    """A manifest whose input name the graph does not have: refused at load, before warm-up
    (or, without warm-up, the first client) could find out."""
    manifest = _manifest(folder)
    manifest["inputs"][0]["name"] = "image"
    _write_manifest(folder, manifest)


def duplicate_version(folder: Path) -> None:
    shutil.copytree(folder, folder.parent / f"0{folder.name}")


FAULTS = {missing_file: "is missing", checksum_mismatch: "does not match the manifest",
          corrupt_onnx: "ONNX Runtime cannot load", invalid_manifest: "not valid JSON",
          wrong_name: "names model 'another-name'", disagrees_with_the_graph: "input 'image' is not in the graph",
          duplicate_version: "duplicate"}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
async def test_a_broken_model_is_unavailable_with_its_reason_and_the_others_serve(model_root: Path, fault: Any) -> None:
    folder = model_root / "fashion-cnn" / fashion_version(model_root)
    fault(folder)
    async with serving(model_dir=model_root, admin_token=TOKEN) as client:
        assert (await client.post("/v1/models/sst2-lstm:predict", json=TEXT)).status_code == 200
        broken = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
        assert broken.status_code == 503
        assert FAULTS[fault] in broken.json()["error"]
        entry = (await index(client))[("fashion-cnn", folder.name)]
        assert entry["state"] == "UNAVAILABLE"
        assert FAULTS[fault] in entry["reason"]
        assert (await client.get("/v2/health/ready")).status_code == 503  # fashion-cnn should be served
        assert (await client.get("/v2/models/sst2-lstm/ready")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'ortserve_model_load_failures_total{model="fashion-cnn"' in metrics
    assert f'ortserve_model_state{{model="fashion-cnn",state="UNAVAILABLE",version="{folder.name}"}} 1.0' in metrics


async def test_without_strict_readiness_a_broken_model_leaves_the_server_ready(model_root: Path) -> None:
    """Triton's --strict-readiness=false: the server is ready once its start's loads are done,
    and each model's own readiness still tells the broken one apart."""
    from tritonclient.grpc import service_pb2 as pb

    from tests.app.conftest import serving_grpc

    checksum_mismatch(model_root / "fashion-cnn" / fashion_version(model_root))
    async with serving_grpc(model_dir=model_root, strict_readiness=False) as (client, stub, _):
        server = await client.get("/v2/health/ready")
        broken = await client.get("/v2/models/fashion-cnn/ready")
        serving = await client.get("/v2/models/sst2-lstm/ready")
        over_grpc = await stub.ServerReady(pb.ServerReadyRequest())
        broken_over_grpc = await stub.ModelReady(pb.ModelReadyRequest(name="fashion-cnn"))
    assert (server.status_code, broken.status_code, serving.status_code) == (200, 503, 200)
    assert over_grpc.ready
    assert not broken_over_grpc.ready


async def test_a_model_directory_that_is_a_models_folder_says_where_to_point(model_root: Path) -> None:
    """`--model-dir models/fashion-cnn` (or a version's folder), a new user's likely slip, was
    "no model '3' under models/fashion-cnn": now it says what the folder is and where to point."""
    model = model_root / "fashion-cnn"
    version = model / fashion_version(model_root)
    with pytest.raises(NoModelsFound, match=(
            rf"{model} holds version folders \({version.name}\), so it is a model's folder, not a model "
            rf"directory: point --model-dir at the folder that holds it \({model_root}\)")):
        async with serving(model_dir=model):
            pass
    with pytest.raises(NoModelsFound, match=(
            rf"{version} holds a model's files, so it is a model version's folder, not a model directory: "
            rf"point --model-dir at the folder two levels up \({model_root}\)")):
        async with serving(model_dir=version):
            pass


async def test_a_version_folder_beside_the_model_folders_is_not_taken_for_a_model(
        model_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(model_root / "fashion-cnn" / fashion_version(model_root), model_root / "7")  # one level too high
    async with serving(model_dir=model_root) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await client.get("/v2/models/7")).status_code == 404
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{model_root}: folders 7 hold a model's files, as version folders do, beside the model "
                      "folders; they are not served (a version folder belongs in its model's folder)"]


async def test_strict_models_refuses_to_start(model_root: Path) -> None:
    checksum_mismatch(model_root / "fashion-cnn" / fashion_version(model_root))
    with pytest.raises(RuntimeError, match="strict-models"):
        async with serving(model_dir=model_root, strict_models=True):
            pass


async def test_a_failed_reload_leaves_the_previous_version_serving(model_root: Path) -> None:
    old = fashion_version(model_root)
    async with serving(model_dir=model_root, **explicit(load_model=["*"])) as client:
        new = copy_model(model_root, "fashion-cnn", int(old) + 1, model_root / "fashion-cnn" / old)
        checksum_mismatch(new)
        response = await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)
        assert response.status_code == 400
        assert f"version {new.name} failed to load" in response.json()["error"]
        assert f"serving ['{old}']" in response.json()["error"]
        answer = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == old
        states = await index(client)
        assert states[("fashion-cnn", old)]["state"] == "READY"
        assert states[("fashion-cnn", new.name)]["state"] == "UNAVAILABLE"
        # fixed on disk, a load call serves it and retires the old one
        shutil.rmtree(new)
        copy_model(model_root, "fashion-cnn", int(new.name), model_root / "fashion-cnn" / old)
        assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 200
        assert (await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)).json()["model_version"] == new.name
        assert (await index(client))[("fashion-cnn", old)]["state"] == "UNAVAILABLE"


# --- replace under load ------------------------------------------------------------------

async def test_replacing_versions_under_load_fails_no_request(model_root: Path) -> None:
    """Short form of the benchmark: 16 clients for a few seconds while versions come and go."""
    base = model_root / "fashion-cnn" / fashion_version(model_root)
    async with serving(model_dir=model_root, **explicit(load_model=["*"])) as client:
        statuses: list[int] = []
        stop = asyncio.Event()

        async def user() -> None:
            while not stop.is_set():
                response = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
                statuses.append(response.status_code)
                # A real client waits on its socket here; in-process, a request answered
                # inline never yields, and one client would starve every other task.
                await asyncio.sleep(0)

        users = [asyncio.create_task(user()) for _ in range(16)]
        versions_seen = set()
        for step in range(6):  # each load adds the next version: switch, drain, unload
            copy_model(model_root, "fashion-cnn", int(base.name) + step + 1, base)
            assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 200
            answer = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
            versions_seen.add(answer.json()["model_version"])
        stop.set()
        await asyncio.gather(*users)
    assert len(statuses) > 100
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(versions_seen) == 6


async def test_an_unloaded_version_is_freed(model_root: Path) -> None:
    async with serving(model_dir=model_root, **explicit(load_model=["*"])) as client:
        app_state = client._transport.app.services  # type: ignore[attr-defined]
        old = weakref.ref(app_state.repository.get("fashion-cnn"))
        session = weakref.ref(old().session)  # type: ignore[union-attr]
        base = model_root / "fashion-cnn" / fashion_version(model_root)
        copy_model(model_root, "fashion-cnn", int(base.name) + 1, base)
        assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 200
        assert (await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)).status_code == 200
        gc.collect()
        assert old() is None
        assert session() is None


async def test_an_unloaded_versions_memory_goes_back_to_the_system_once_it_is_freed(model_root: Path) -> None:
    """app/repository/loader.py asks for malloc_trim UNLOADED_TRIM_AFTER_S after a version
    is retired: once, after its session is gone (else there would be nothing to return)."""
    from app.repository.loader import UNLOADED_TRIM_AFTER_S

    async with serving(model_dir=model_root, **explicit(load_model=["*"])) as client:
        repository = client._transport.app.services.repository  # type: ignore[attr-defined]
        session = weakref.ref(repository.get("fashion-cnn").session)
        sessions_alive_at_trim: list[bool] = []
        repository.loader.memory.trim = lambda: sessions_alive_at_trim.append(session() is not None)
        base = model_root / "fashion-cnn" / fashion_version(model_root)
        copy_model(model_root, "fashion-cnn", int(base.name) + 1, base)
        assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 200
        assert sessions_alive_at_trim == []  # not at once: the callers that retired it still hold it
        for _ in range(int((UNLOADED_TRIM_AFTER_S + 30) / 0.05)):  # bounded: a busy machine is slow, not wrong
            if sessions_alive_at_trim:
                break
            await asyncio.sleep(0.05)
    assert sessions_alive_at_trim == [False]


async def test_without_trim_memory_an_unload_leaves_the_heap_alone(model_root: Path) -> None:
    async with serving(model_dir=model_root, trim_memory=False, **explicit(load_model=["*"])) as client:
        assert client._transport.app.services.repository.loader.memory is None  # type: ignore[attr-defined]


# --- poll mode ---------------------------------------------------------------------------

async def test_poll_mode_follows_the_folder(model_root: Path) -> None:
    base = model_root / "fashion-cnn" / fashion_version(model_root)
    async with serving(model_dir=model_root, model_control_mode="poll", repository_poll_s=0.05,
                       admin_token=TOKEN) as client:
        async def served_version() -> str:
            return (await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)).json().get("model_version", "")

        async def until(condition: Any) -> None:
            for _ in range(400):  # bounded: 20 s at most
                if await condition():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the poller never caught up")

        newer = copy_model(model_root, "fashion-cnn", int(base.name) + 1, base)
        await until(lambda: _equals(served_version(), newer.name))
        shutil.rmtree(newer)  # removed: drained, unloaded, the older one serves again
        await until(lambda: _equals(served_version(), base.name))
        manifest = _manifest(base)
        manifest["description"] = "changed"
        _write_manifest(base, manifest)  # a changed manifest reloads the version
        await until(lambda: _reloaded(client))
        shutil.rmtree(model_root / "sst2-lstm")  # a removed model is unloaded
        await until(lambda: _status_is(client, "/v2/models/sst2-lstm/ready", 503))
        assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 403


async def _equals(value: Any, expected: str) -> bool:
    return await value == expected


async def _status_is(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status


async def _reloaded(client: httpx.AsyncClient) -> bool:
    return "ortserve_model_loads_total{model=\"fashion-cnn\",result=\"ok\"} 4.0" in (await client.get("/metrics")).text
