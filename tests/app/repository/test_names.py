"""Model names and versions from clients are checked before the disk is touched (issue 22,
item 2): 400 for a string no model can be named, 404 for a good name that does not exist,
no phantom entries, and OS errors that are a 503 with their reason, never a 500."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.manifest import VersionPolicy
from app.repository.disk import ModelFolders
from tests.app.conftest import copy_model, serving
from tests.app.http.test_hardening import live_server
from tests.app.onnx_models import mlp, save
from tests.app.repository.test_lifecycle import TOKEN, explicit

# As they travel in a request line: dots, their encodings, NUL, a backslash, a path, 5,000 characters.
BAD_NAMES = ["..", "%2e%2e", "%2E%2E", ".", "a%00b", "a%5Cb", "a%0A", "-fashion", "x" * 5000]


async def exchange(port: int, method: str, path: str, body: bytes = b"", token: str | None = None) -> tuple[int, bytes]:
    """One request on a raw socket, sent as written (no client normalises the path)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), content


async def test_bad_names_are_a_400_on_every_client_path_before_any_file_is_read(
        model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    real_scan = ModelFolders._scan

    def recording_scan(self: ModelFolders, name: str, folder: Path | None = None) -> Any:
        scanned.append(name)
        return real_scan(self, name, folder)

    monkeypatch.setattr(ModelFolders, "_scan", recording_scan)
    v2_body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]})
    async with live_server(model_dir=model_root, **explicit(load_model=["*"])) as (server, app):
        port = server.config.port
        scanned.clear()
        for name in BAD_NAMES:
            for method, path, body, token in [
                ("POST", f"/v2/repository/models/{name}/load", b"", TOKEN),
                ("POST", f"/v2/repository/models/{name}/unload", b"", TOKEN),
                ("POST", f"/v2/models/{name}/infer", v2_body, None),
                ("POST", f"/v2/models/{name}/versions/1/infer", v2_body, None),
                ("GET", f"/v2/models/{name}", b"", None),
                ("GET", f"/v2/models/{name}/ready", b"", None),
                ("POST", f"/v1/models/{name}:predict", b'{"instances": [1]}', None),
            ]:
                status, content = await exchange(port, method, path, body, token)
                assert status == 400, (path[:80], content[:200])
                assert b"is not a model name" in content, content[:200]
        for version in ["1x", "%2e%2e", "-1", "1" * 40, "%C2%B2"]:  # the last: a superscript two
            status, content = await exchange(port, "POST", f"/v2/models/fashion-cnn/versions/{version}/infer", v2_body)
            assert status == 400, (version, content)
            assert b"is not a model version" in content
        missing, _ = await exchange(port, "POST", "/v2/repository/models/no-such-model/load", b"", TOKEN)
        unknown, _ = await exchange(port, "POST", "/v2/models/no-such-model/infer", v2_body)
        no_version, _ = await exchange(port, "POST", "/v2/models/fashion-cnn/versions/99/infer", v2_body)
        scanned_by_clients = list(scanned)
        assert app.services.repository.names() == ["fashion-cnn", "sst2-lstm"]
        _, index = await exchange(port, "POST", "/v2/repository/index", b"", TOKEN)
    assert scanned_by_clients == ["no-such-model"]  # the only client path that read the disk had a good name
    assert (missing, unknown, no_version) == (404, 404, 404)
    assert {entry["name"] for entry in orjson.loads(index)} == {"fashion-cnn", "sst2-lstm"}  # no phantoms


async def test_a_model_folder_that_links_outside_the_model_directory_is_not_served(
        model_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    copy_model(elsewhere, "escape", 1, model_root / "fashion-cnn" / next(os.walk(model_root / "fashion-cnn"))[1][0])
    (model_root / "escape").symlink_to(elsewhere / "escape", target_is_directory=True)
    inner = model_root / "sst2-lstm" / "7"
    inner.symlink_to(tmp_path, target_is_directory=True)  # a version folder that leaves its model's folder
    async with serving(model_dir=model_root, **explicit(load_model=["fashion-cnn"])) as client:
        load = await client.post("/v2/repository/models/escape/load", headers={"Authorization": f"Bearer {TOKEN}"})
        served = await client.post("/v2/models/escape/ready")
        await client.post("/v2/repository/models/sst2-lstm/load", headers={"Authorization": f"Bearer {TOKEN}"})
        index = await client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert load.status_code == 400
    assert "a link that leaves the model directory" in load.json()["error"]
    assert served.status_code in (404, 405, 503)
    entries = {(e["name"], e["version"]): e for e in index.json()}
    assert entries[("sst2-lstm", "7")]["reason"] == "a link that leaves the model's folder"
    assert ("escape", "1") not in entries


async def test_an_unreadable_model_folder_is_a_logged_503_not_a_500(
        model_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_iterdir = Path.iterdir

    def failing_iterdir(self: Path) -> Any:
        if self.name == "sst2-lstm":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    async with serving(model_dir=model_root, **explicit(load_model=["fashion-cnn"])) as client:
        monkeypatch.setattr(Path, "iterdir", failing_iterdir)
        load = await client.post("/v2/repository/models/sst2-lstm/load", headers={"Authorization": f"Bearer {TOKEN}"})
        index = await client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
        monkeypatch.setattr(Path, "iterdir", lambda self: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        whole = await client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert load.status_code == 503
    assert "its folder cannot be read: Permission denied" in load.json()["error"]
    assert index.status_code == 200  # the others are still listed
    assert {e["name"] for e in index.json()} == {"fashion-cnn"}
    assert whole.status_code == 503
    assert "the model folder cannot be read: Input/output error" in whole.json()["error"]
    assert "cannot be read" in caplog.text


async def test_a_model_named_in_upper_case_is_served_under_exactly_its_folders_name(tmp_path: Path) -> None:
    """Triton's repositories and Hugging Face's model names use upper case (MiniLM, bert-base-NER):
    such a folder is served, under its own name only."""
    save(tmp_path, "MiniLM-L6", mlp())
    x = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    async with serving(model_dir=tmp_path, admin_token=TOKEN) as client:
        answered = await client.post("/v2/models/MiniLM-L6/infer", json=x)
        other_case = await client.post("/v2/models/minilm-l6/infer", json=x)
        index = (await client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})).json()
    assert answered.status_code == 200, answered.text
    assert answered.json()["model_name"] == "MiniLM-L6"
    assert other_case.status_code == 404
    assert [e["name"] for e in index] == ["MiniLM-L6"]


def test_a_name_is_its_folders_only_where_the_listing_has_it_exactly(tmp_path: Path) -> None:
    """Where the file system ignores case, the folder `fashion-cnn/` also opens as `Fashion-CNN/`;
    the listing is what decides which name it has."""
    (tmp_path / "fashion-cnn").mkdir()
    folders = ModelFolders([tmp_path], VersionPolicy())
    assert folders._named_exactly(tmp_path, "fashion-cnn")
    assert not folders._named_exactly(tmp_path, "Fashion-CNN")
