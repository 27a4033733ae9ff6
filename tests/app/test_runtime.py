"""ONNX Runtime choices: providers, the variant per device, CPU counting."""

from __future__ import annotations

import pytest

from app.manifest import load_manifest
from app.runtime import CPU, CUDA, available_cpus, choose_providers, choose_variant, ort_options
from tests.conftest import model_folder


@pytest.fixture
def manifest():  # type: ignore[no-untyped-def]
    return load_manifest(model_folder("sst2-lstm"), verify_files=False)


def test_auto_variant_follows_the_manifest_per_device(manifest) -> None:  # type: ignore[no-untyped-def]
    assert choose_variant(manifest, [CPU], "auto") == manifest.preferred_variant["cpu"]
    assert choose_variant(manifest, [CUDA, CPU], "auto") == "fp16"
    assert choose_variant(manifest, [CPU], "fp32") == "fp32"
    without = manifest.model_copy(update={"preferred_variant": {}})
    assert choose_variant(without, [CPU], "auto") == "int8"


def test_unknown_variant_and_provider_are_refused(manifest) -> None:  # type: ignore[no-untyped-def]
    stripped = manifest.model_copy(update={"variants": {"fp32": manifest.variants["fp32"]}, "preferred_variant": {}})
    with pytest.raises(ValueError, match="no int8 variant"):
        choose_variant(stripped, [CPU], "int8")
    with pytest.raises(ValueError, match="not available"):
        choose_providers(["NoSuchExecutionProvider"])
    assert choose_providers(None)[-1] == CPU


def test_cuda_libraries_are_loaded_once_before_a_cuda_session(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.runtime

    calls: list[int] = []
    monkeypatch.setattr(app.runtime.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(app.runtime.ort, "preload_dlls", lambda: calls.append(1), raising=False)
    app.runtime.load_cuda_libraries.cache_clear()
    try:
        assert choose_providers([CPU]) == [CPU]
        assert calls == []  # CPU only: nothing to load
        assert choose_providers(None) == [CUDA, CPU]
        assert choose_providers([CUDA]) == [CUDA]
        assert calls == [1]
    finally:
        app.runtime.load_cuda_libraries.cache_clear()


def test_available_cpus_is_positive_and_bounded() -> None:
    import os

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


@pytest.mark.parametrize(("cpus", "inference_threads", "expected"), [(1, 1, 1), (2, 1, 1), (8, 1, 7), (8, 2, 3)])
def test_intra_op_threads_leave_the_event_loop_a_core(monkeypatch: pytest.MonkeyPatch, cpus: int,
                                                      inference_threads: int, expected: int) -> None:
    import app.runtime

    monkeypatch.setattr(app.runtime, "available_cpus", lambda: cpus)
    assert ort_options(None, 0, inference_threads).intra_op_threads == expected
    assert ort_options(None, 5, inference_threads).intra_op_threads == 5


@pytest.mark.parametrize(("cpus", "workers", "expected"), [(2, 2, 1), (16, 16, 1), (16, 4, 3), (16, 2, 7)])
def test_worker_processes_share_the_cores_an_event_loop_each(monkeypatch: pytest.MonkeyPatch, cpus: int,
                                                              workers: int, expected: int) -> None:
    import app.runtime

    monkeypatch.setattr(app.runtime, "available_cpus", lambda: cpus)
    assert ort_options(None, 0, 1, workers).intra_op_threads == expected
    assert ort_options(None, 3, 1, workers).intra_op_threads == 3  # an explicit count is kept
