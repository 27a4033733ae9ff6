"""A user's own models, made here with onnx.helper, served by a real `python -m app` as
drop-ins: Triton's HTTP client gets what ONNX Runtime answers in-process, in JSON and in
binary tensors; /config shows the configuration completed from each graph; Triton's
perf_analyzer runs against each with its default random inputs; and the import command
makes each a version with a manifest that serves the same answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from load_tests import perf_analyzer
from load_tests.server import ROOT, ServerProcess
from tests.app import onnx_models as models

pytestmark = pytest.mark.server


@dataclass(frozen=True)
class Case:
    graph: Callable[[], onnx.GraphProto]
    inputs: Callable[[np.random.Generator], dict[str, np.ndarray]]
    max_batch_size: Callable[[int], bool]
    """What the completed configuration's max_batch_size must satisfy."""
    opset: int = 17
    perf_shapes: tuple[str, ...] = ()
    """perf_analyzer's --shape for each dynamic axis besides the batch axis."""


def _floats(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


CASES = {
    "mlp": Case(models.mlp, lambda rng: {"features": _floats(5, 4)(rng)}, lambda n: n > 1),
    "conv": Case(models.conv, lambda rng: {"pixels": _floats(3, 1, 8, 8)(rng)}, lambda n: n > 1),
    # a dynamic sequence axis: requests batch only with others of their length, never padded
    "lstm": Case(models.lstm, lambda rng: {"steps": _floats(2, 6, 3)(rng)}, lambda n: n > 1,
                 perf_shapes=("steps:4,3",)),
    "masking": Case(models.two_in_two_out, lambda rng: {
        "ids": rng.integers(0, 100, (3, 5)).astype(np.int64), "mask": rng.integers(0, 2, (3, 5)).astype(bool)},
        lambda n: n > 1),
    "fixed-batch": Case(lambda: models.mlp(first_axis=1), lambda rng: {"features": _floats(1, 4)(rng)},
                        lambda n: n == 0),
    "typed": Case(models.half_and_bytes, lambda rng: {
        "half": rng.standard_normal((2, 3)).astype(np.float16), "pixels": rng.integers(0, 256, (2, 4)).astype(np.uint8)},
        lambda n: n > 1),
    # rank 0: Triton's dims [1] reshaped to [] in the configuration, so perf_analyzer can send it
    "scalar": Case(models.squared, lambda rng: {"t": np.array(rng.standard_normal(), np.float32)}, lambda n: n == 0),
    "strings": Case(models.yes_or_no, lambda rng: {"words": np.array([["yes", "no"], ["né", "yes"]], dtype=object)},
                    lambda n: n > 1, opset=19),
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own-models")
    for name, case in CASES.items():
        models.save(root, name, case.graph(), opset=case.opset)
    return root


@pytest.fixture(scope="module")
def running(repository: Path) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-dir", str(repository)]) as server:
        yield server


def _client(server: ServerProcess):  # noqa: ANN202 - tritonclient is a test dependency without types
    import tritonclient.http as triton

    return triton, triton.InferenceServerClient(server.url.removeprefix("http://"))


def _v2_datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def infer(server: ServerProcess, name: str, inputs: dict[str, np.ndarray], binary: bool) -> dict[str, np.ndarray]:
    triton, client = _client(server)
    sent = []
    for key, array in inputs.items():
        item = triton.InferInput(key, list(array.shape), _v2_datatype(array))
        item.set_data_from_numpy(array, binary_data=binary)
        sent.append(item)
    outputs = [o["name"] for o in client.get_model_metadata(name)["outputs"]]
    result = client.infer(name, sent, outputs=[triton.InferRequestedOutput(o, binary_data=binary) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        if expected.dtype == object:  # tritonclient gives BYTES back as bytes
            assert [v.decode() if isinstance(v, bytes) else v for v in got[name].ravel()] == list(expected.ravel())
            assert got[name].shape == expected.shape
        else:
            np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_gets_what_onnx_runtime_answers(running: ServerProcess, repository: Path, name: str,
                                                    binary: bool) -> None:
    inputs = CASES[name].inputs(np.random.default_rng(len(name)))
    want = models.reference(repository / name / "1" / "model.onnx", inputs)
    assert_same(infer(running, name, inputs, binary), want)


@pytest.mark.parametrize("name", CASES)
def test_the_configuration_is_completed_from_the_graph(running: ServerProcess, repository: Path, name: str) -> None:
    import onnxruntime as ort

    _, client = _client(running)
    config = client.get_model_config(name)
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"))
    assert CASES[name].max_batch_size(config["max_batch_size"]), config
    batches = config["max_batch_size"] > 0
    for kind, nodes in (("input", session.get_inputs()), ("output", session.get_outputs())):
        declared = {t["name"]: t for t in config[kind]}
        assert sorted(declared) == sorted(n.name for n in nodes)
        for node in nodes:
            shape = [d if isinstance(d, int) else -1 for d in node.shape]
            if (batches and shape == [-1]) or (not batches and shape == []):  # Triton's dims [1] reshaped to []
                assert (declared[node.name]["dims"], declared[node.name]["reshape"]) == ([1], {"shape": []})
            else:
                assert declared[node.name]["dims"] == (shape[1:] if batches else shape)
            onnx_type = node.type.removeprefix("tensor(").removesuffix(")")
            assert declared[node.name]["data_type"] == {
                "float": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "string": "TYPE_STRING",
                "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "double": "TYPE_FP64"}[onnx_type]
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert parameters["verified"] == "false"
    assert parameters["configuration"] == "the graph"
    if name == "fixed-batch":
        assert "fixed first axis of 1" in parameters["batching"]
        assert "dynamic_batching" not in config
    elif config["max_batch_size"] > 1:
        assert parameters["batching"].startswith("measured: cost per item")
        assert parameters["cost_per_item_ms"]


@pytest.mark.parametrize("name", CASES)
def test_perf_analyzer_runs_against_it_with_its_random_inputs(running: ServerProcess, name: str,
                                                              perf_analyzer_tool: str) -> None:
    shapes = [option for shape in CASES[name].perf_shapes for option in ("--shape", shape)]
    done = perf_analyzer.run(perf_analyzer_tool, name, running, "http", 2, *perf_analyzer.QUICK_CHECK, *shapes)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "throughput:" in done.stdout, done.stdout
    assert "error" not in done.stdout.lower(), done.stdout


@pytest.mark.parametrize("name", CASES)
def test_the_import_command_serves_the_same_model_with_a_manifest(repository: Path, tmp_path: Path,
                                                                   name: str) -> None:
    imported = tmp_path / "models"
    done = subprocess.run([sys.executable, "-m", "app", "import", str(repository / name / "1" / "model.onnx"),
                           "--name", name, "--model-dir", str(imported)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"imported {name} version 1" in done.stdout
    assert (imported / name / "1" / "manifest.json").is_file()
    inputs = CASES[name].inputs(np.random.default_rng(9))
    want = models.reference(repository / name / "1" / "model.onnx", inputs)
    with ServerProcess(["--model-dir", str(imported)]) as server:
        assert_same(infer(server, name, inputs, binary=True), want)
        _, client = _client(server)
        assert client.get_model_config(name)["parameters"]["verified"]["string_value"] == "true"
    shutil.rmtree(imported)
