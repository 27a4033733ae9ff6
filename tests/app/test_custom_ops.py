"""Custom operators (app/custom_ops.py, `custom_op_libraries`): a graph with an operator of
onnxruntime-extensions is served with that library, is UNAVAILABLE with what to do without
it, and a model's configuration can name only a library the server was started with; the
library named nowhere else is never loaded into the process. Models are made here with
onnx.helper."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime_extensions
import pytest
from pydantic import ValidationError

from app import custom_ops, model_tools
from app.settings import Settings
from load_tests.server import ROOT, ServerProcess
from tests.app.conftest import serving, wait_for
from tests.app.onnx_models import CONTRIB_OPSET, save, upper_cased

LIBRARY = Path(onnxruntime_extensions.get_library_path())
TOKEN = "custom-ops-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
WORDS = ["a gripping film", "Dull", ""]


def text_request(words: list[str]) -> dict[str, object]:
    return {"inputs": [{"name": "text", "shape": [len(words)], "datatype": "BYTES", "data": words}]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    save(root, "upper", upper_cased(), other_opsets=(CONTRIB_OPSET,), checked=False)
    return root


async def _index(client: object) -> dict[str, dict[str, str]]:
    answer = await client.post("/v2/repository/index", headers=ADMIN)  # type: ignore[attr-defined]
    return {entry["name"]: entry for entry in answer.json()}


async def test_a_graph_with_a_custom_operator_is_served_with_its_library(root: Path) -> None:
    async with serving(model_dir=root, custom_op_libraries=[LIBRARY], admin_token=TOKEN) as client:
        answer = await client.post("/v2/models/upper/infer", json=text_request(WORDS))
        metadata = (await client.get("/v2/models/upper")).json()
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [w.upper() for w in WORDS]
    assert metadata["inputs"][0]["datatype"] == "BYTES"


async def test_without_its_library_the_model_says_what_to_do(root: Path) -> None:
    async with serving(model_dir=root, admin_token=TOKEN) as client:
        ready = await client.get("/v2/models/upper/ready")
        index = await _index(client)
    assert ready.status_code != 200
    reason = index["upper"]["reason"]
    assert "ai.onnx.contrib:StringUpper is a custom operator" in reason, reason
    assert "--custom-op-libraries" in reason
    assert "onnxruntime_extensions.get_library_path()" in reason


def _config(folder: Path, library: str) -> None:
    (folder / "config.pbtxt").write_text(f'platform: "onnxruntime_onnx"\n'
                                         f'model_operations {{ op_library_filename: "{library}" }}\n')


def _mapped(library: Path) -> bool:
    return str(library) in Path("/proc/self/maps").read_text()


async def test_a_configuration_names_only_a_library_the_server_loads(root: Path, tmp_path: Path) -> None:
    """Triton's model_operations: the server's own library is taken; a copy of it elsewhere
    (a real library, named by a repository) is refused and never loaded."""
    _config(root / "upper", str(LIBRARY))
    save(root, "elsewhere", upper_cased(), other_opsets=(CONTRIB_OPSET,), checked=False)
    copy = tmp_path / "planted" / "libortx.so"
    copy.parent.mkdir()
    shutil.copyfile(LIBRARY, copy)
    _config(root / "elsewhere", str(copy))
    async with serving(model_dir=root, custom_op_libraries=[LIBRARY], admin_token=TOKEN) as client:
        served = await client.post("/v2/models/upper/infer", json=text_request(WORDS))
        index = await _index(client)
    assert served.status_code == 200, served.text
    reason = index["elsewhere"]["reason"]
    assert f"model_operations names '{copy}', which this server does not load" in reason, reason
    assert "--custom-op-libraries" in reason
    assert not _mapped(copy)  # refused before any session could load it


async def test_a_relative_library_is_read_from_the_models_folder(root: Path) -> None:
    beside = root / "upper" / "ops.so"
    shutil.copyfile(LIBRARY, beside)
    _config(root / "upper", "ops.so")
    async with serving(model_dir=root, custom_op_libraries=[beside], admin_token=TOKEN) as client:
        served = await client.post("/v2/models/upper/infer", json=text_request(WORDS))
    assert served.status_code == 200, served.text


async def test_two_libraries_of_one_domain_are_named_as_the_fault(root: Path, tmp_path: Path) -> None:
    """ONNX Runtime's "Domain already set in registry", for every model, says nothing of why."""
    copy = tmp_path / "copy.so"
    shutil.copyfile(LIBRARY, copy)
    async with serving(model_dir=root, custom_op_libraries=[LIBRARY, copy], admin_token=TOKEN) as client:
        index = await _index(client)
    reason = index["upper"]["reason"]
    assert "Domain already set in registry" in reason
    assert "two of the custom operator libraries define the same operator domain" in reason, reason


def test_the_model_tools_read_the_libraries_from_the_environment(root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m app check` and `import` load models as the server does: with the libraries
    ORTSERVE_CUSTOM_OP_LIBRARIES names, and with the hint without them."""
    graph = root / "upper" / "1" / "model.onnx"
    assert model_tools.main(["check", str(root)]) == 1
    assert "is a custom operator: name the library that provides it in --custom-op-libraries" in capsys.readouterr().out
    assert model_tools.main(["import", str(graph), "--name", "upper", "--model-dir", str(tmp_path / "a")]) != 0
    assert "is a custom operator" in capsys.readouterr().err
    monkeypatch.setenv("ORTSERVE_CUSTOM_OP_LIBRARIES", str(LIBRARY))
    assert model_tools.main(["check", str(root)]) == 0
    assert model_tools.main(["import", str(graph), "--name", "upper", "--model-dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "upper" / "1" / "manifest.json").is_file()


def test_library_paths_are_read_as_lists_and_must_be_files(tmp_path: Path) -> None:
    other = tmp_path / "other.so"
    other.write_bytes(b"")
    assert Settings(custom_op_libraries=f"{LIBRARY}, {other}").custom_op_libraries == [LIBRARY.resolve(), other]
    assert Settings(custom_op_libraries=f'["{LIBRARY}"]').custom_op_libraries == [LIBRARY.resolve()]
    with pytest.raises(ValidationError, match="is not a file"):
        Settings(custom_op_libraries=str(tmp_path / "missing.so"))


def test_only_a_library_that_registers_operators_is_taken(tmp_path: Path) -> None:
    text = tmp_path / "notes.so"
    text.write_text("not a library")
    numpy_core = next(Path(np.__file__).parent.glob("_core/_multiarray_umath*.so"))
    assert custom_ops.library_problem(LIBRARY) is None
    assert "cannot be loaded" in (custom_ops.library_problem(text) or "")
    assert "exports no RegisterCustomOps function" in (custom_ops.library_problem(numpy_core) or "")
    started = subprocess.run([sys.executable, "-m", "app", "--custom-op-libraries", str(numpy_core), "--port", "0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 2
    assert "exports no RegisterCustomOps function: refusing to start" in started.stderr


@pytest.mark.parametrize(("message", "hinted"), [
    ("Fatal error: ai.onnx.contrib:StringUpper(-1) is not a registered function/op", True),
    ("Fatal error: com.example.ops:Blur(1) is not a registered function/op", True),
    ("Fatal error: :Frobnicate(-1) is not a registered function/op", False),  # ONNX's own domain
    ("Fatal error: ai.onnx.ml:Foo(3) is not a registered function/op", False),
    ("Load model from bytes failed: Protobuf parsing failed", False),
    ("Fatal error: Domain already set in registry", True),
])
def test_the_hint_is_given_for_custom_domains_only(message: str, hinted: bool) -> None:
    assert bool(custom_ops.hint(message, [])) is hinted
    if hinted:
        assert "(it loads /x.so)" in custom_ops.hint(message, ["/x.so"])


@pytest.mark.server
def test_every_worker_serves_with_the_libraries(root: Path) -> None:
    """The workers read the settings from the environment their parent writes (a list of paths
    among them); requests on connections of their own reach both workers."""
    args = ["--model-dir", str(root), "--workers", "2", "--log-level", "info", "--custom-op-libraries", str(LIBRARY)]
    with ServerProcess(args) as server:
        wait_for(lambda: server.log.read_text().count("gRPC (KServe V2, health, reflection) on") == 2)
        answers = [httpx.post(f"{server.url}/v2/models/upper/infer", json=text_request(WORDS), timeout=30)
                   for _ in range(16)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {tuple(a.json()["outputs"][0]["data"]) for a in answers} == {tuple(w.upper() for w in WORDS)}
