"""Several model directories (Triton's repeated --model-repository): their models served
together, and a name found in two served from neither, with why, until it is in one only."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.__main__ import _as_env, parse_settings, preflight
from app.settings import Settings
from load_tests.server import ServerProcess
from tests.app.conftest import copy_model, serving
from tests.app.repository.calls import ADMIN, IMAGE, TEXT, TOKEN, index
from tests.conftest import model_folder

FASHION, SST2 = int(model_folder("fashion-cnn").name), int(model_folder("sst2-lstm").name)


@pytest.fixture
def two_roots(tmp_path: Path) -> tuple[Path, Path]:
    """fashion-cnn in one model directory, sst2-lstm in the other."""
    first, second = tmp_path / "team-a", tmp_path / "team-b"
    copy_model(first, "fashion-cnn", FASHION)
    copy_model(second, "sst2-lstm", SST2)
    return first, second


async def test_the_models_of_every_directory_are_served_together(two_roots: tuple[Path, Path]) -> None:
    async with serving(model_dir=list(two_roots), admin_token=TOKEN) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200
        image = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
        text = await client.post("/v1/models/sst2-lstm:predict", json=TEXT)
        assert (image.status_code, text.status_code) == (200, 200), (image.text, text.text)
        assert {(name, e["state"]) for (name, _), e in (await index(client)).items()} == {
            ("fashion-cnn", "READY"), ("sst2-lstm", "READY")}


async def test_a_name_in_two_directories_is_served_from_neither_and_says_why(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    copy_model(second, "fashion-cnn", FASHION)
    async with serving(model_dir=[first, second], model_control_mode="explicit", load_model=["*"],
                       admin_token=TOKEN) as client:
        assert (await client.post("/v1/models/sst2-lstm:predict", json=TEXT)).status_code == 200
        refused = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
        assert refused.status_code == 503
        why = "is in more than one model directory"
        assert why in refused.json()["error"]
        assert str(first / "fashion-cnn") in refused.json()["error"]
        entry = (await index(client))[("fashion-cnn", str(FASHION))]
        assert entry["state"] == "UNAVAILABLE"
        assert why in entry["reason"]
        assert str(second / "fashion-cnn") in entry["reason"]
        load = await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)
        assert load.status_code == 400
        assert why in load.json()["error"]

        shutil.rmtree(second / "fashion-cnn")  # in one directory only: it loads
        assert (await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)).status_code == 200
        assert (await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)).status_code == 200


async def test_a_name_in_two_directories_without_versions_still_says_why(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    (second / "fashion-cnn").mkdir()  # an empty folder of the same name: still two
    async with serving(model_dir=[first, second], model_control_mode="explicit", admin_token=TOKEN) as client:
        load = await client.post("/v2/repository/models/fashion-cnn/load", headers=ADMIN)
        assert load.status_code == 400
        assert "is in more than one model directory" in load.json()["error"]


async def test_poll_mode_serves_a_name_again_once_it_is_in_one_directory(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    async with serving(model_dir=[first, second], model_control_mode="poll", repository_poll_s=0.05) as client:
        async def until(status: int, saying: str = "") -> httpx.Response:
            """The first answer of that status whose text says `saying`: the states on the way
            (UNLOADING, "finishing its requests") answer 503 as well, with their own words."""
            for _ in range(400):  # bounded: 20 s at most
                answer = await client.post("/v1/models/fashion-cnn:predict", json=IMAGE)
                if answer.status_code == status and saying in answer.text:
                    return answer
                await asyncio.sleep(0.05)
            raise AssertionError(f"the poller never made it {status} {saying}")

        await until(200)
        copy_model(second, "fashion-cnn", FASHION)  # a second copy appears: which is meant is unknown
        why = "is in more than one model directory"
        assert why in (await until(503, why)).json()["error"]
        shutil.rmtree(first / "fashion-cnn")  # the other one goes: the second's is served
        await until(200)
        assert (await client.post("/v1/models/sst2-lstm:predict", json=TEXT)).status_code == 200


def test_directories_come_as_repeated_flags_a_json_list_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings(["--model-dir", "a", "--model-dir", "b"]).model_dir == [Path("a"), Path("b")]
    assert parse_settings(["--model-dir", "a"]).model_dir == [Path("a")]
    assert Settings(model_dir=Path("one")).model_dir == [Path("one")]
    monkeypatch.setenv("ORTSERVE_MODEL_DIR", "x, y")
    assert Settings().model_dir == [Path("x"), Path("y")]
    monkeypatch.setenv("ORTSERVE_MODEL_DIR", '["x,1", "y"]')
    assert Settings().model_dir == [Path("x,1"), Path("y")]
    # what a supervising parent hands its workers reads back the same
    monkeypatch.setenv("ORTSERVE_MODEL_DIR", _as_env([Path("x,1"), Path("y")]))
    assert Settings().model_dir == [Path("x,1"), Path("y")]


def test_a_directory_named_twice_or_missing_is_refused_before_serving(tmp_path: Path) -> None:
    twice = subprocess.run([sys.executable, "-m", "app", "--model-dir", str(tmp_path), "--model-dir",
                            f"{tmp_path}/."], capture_output=True, text=True, timeout=60)
    assert twice.returncode == 2
    assert "--model-dir / ORTSERVE_MODEL_DIR" in twice.stderr
    assert "is named twice" in twice.stderr
    problem = preflight(Settings(model_dir=[tmp_path, tmp_path / "gone"], port=0, grpc=False))
    assert problem is not None
    assert f"model directory {tmp_path / 'gone'} does not exist" in problem


def test_check_reads_every_directory_and_names_a_model_in_two(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots

    def check(*roots: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", "check", *map(str, roots)],
                              capture_output=True, text=True, timeout=300)

    both = check(first, second)
    assert both.returncode == 0, both.stdout + both.stderr
    assert "2 version(s) checked, 0 problem(s)" in both.stdout
    copy_model(second, "fashion-cnn", FASHION)
    twice = check(first, second)
    assert twice.returncode == 1
    assert (f"fashion-cnn: not served: in more than one model directory ({first / 'fashion-cnn'}, "
            f"{second / 'fashion-cnn'})") in twice.stdout


def test_workers_serve_every_directory(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    with ServerProcess(["--model-dir", str(first), "--model-dir", str(second), "--workers", "2"]) as server:
        for path, body in (("fashion-cnn", IMAGE), ("sst2-lstm", TEXT)):
            for _ in range(4):  # each on a connection of its own: the kernel spreads them over both workers
                answer = httpx.post(f"{server.url}/v1/models/{path}:predict", json=body, timeout=30)
                assert answer.status_code == 200, answer.text


async def test_the_http_routes_that_name_a_repository_are_refused_as_triton_refuses_them(
        two_roots: tuple[Path, Path]) -> None:
    """Triton's `/v2/repository/{repository_name}/index` and `.../models/{name}/load|unload`:
    a 400 saying why, after the access check the routes without a name make."""
    async with serving(model_dir=list(two_roots), model_control_mode="explicit", admin_token=TOKEN) as client:
        index = await client.post("/v2/repository/team-a/index", headers=ADMIN)
        load = await client.post("/v2/repository/team-a/models/fashion-cnn/load", headers=ADMIN)
        no_token = await client.post("/v2/repository/team-a/models/fashion-cnn/unload")
        other = await client.post("/v2/repository/team-a/models/fashion-cnn/delete", headers=ADMIN)
        not_loaded = await client.get("/v2/models/fashion-cnn/ready")
    assert (index.status_code, load.status_code, no_token.status_code, other.status_code) == (400, 400, 401, 404)
    assert load.json()["error"] == ("repository_name 'team-a': naming a repository is not supported; leave it out "
                                    "(model names are unique across the model directories)")
    assert not_loaded.status_code == 503  # nothing was loaded
