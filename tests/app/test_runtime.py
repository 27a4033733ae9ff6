"""ONNX Runtime choices: providers, the variant per device, CPU counting."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.manifest import load_manifest
from app.processes import available_cpus, worker_count
from app.runtime import CPU, CUDA, choose_providers, choose_variant, ort_options
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


@pytest.mark.parametrize(("affinity", "quota", "expected"), [({0, 1, 2, 3}, None, 4), ({0, 1, 2, 3}, 1.5, 2),
                                                           ({2}, None, 1), ({0, 1, 2, 3, 4, 5, 6, 7}, 0.5, 1)])
def test_workers_auto_is_one_per_usable_cpu(monkeypatch: pytest.MonkeyPatch, affinity: set[int],
                                            quota: float | None, expected: int) -> None:
    """The affinity mask and the cgroup's CPU quota (a container's --cpus, rounded up) bound it."""
    import app.processes

    monkeypatch.setattr(app.processes.os, "sched_getaffinity", lambda pid: affinity)
    monkeypatch.setattr(app.processes, "cgroup_cpu_quota", lambda: quota)
    assert worker_count("auto") == expected
    assert worker_count(3) == 3  # a number is kept


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


@pytest.mark.parametrize(("cpus", "workers", "narrow", "wide"),
                         [(1, 1, 1, 0), (2, 1, 1, 2), (2, 2, 1, 0), (16, 1, 15, 16), (16, 2, 7, 8), (16, 16, 1, 0)])
def test_the_wide_session_adds_the_event_loops_core(monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int,
                                                    narrow: int, wide: int) -> None:
    import app.runtime

    monkeypatch.setattr(app.runtime, "available_cpus", lambda: cpus)
    options = ort_options([CPU], 0, 1, workers)
    assert (options.intra_op_threads, options.wide_threads) == (narrow, wide)
    assert ort_options([CPU], 2, 1, workers).wide_threads == 0  # an explicit thread count: one session


def test_the_threshold_is_where_the_wide_session_stays_fast_enough() -> None:
    from app.runtime import required_speedup, wide_threshold

    assert required_speedup(1, 2) == 1.5  # half of the ideal 2x
    assert required_speedup(7, 8) == pytest.approx(1 + 1 / 14)
    curve = {1: 0.6, 16: 1.3, 32: 1.45, 64: 1.55, 128: 1.7}
    assert wide_threshold(curve, 1.5) == 64
    assert wide_threshold(curve, 1.2) == 16
    assert wide_threshold(curve, 2.0) is None
    # A size that pays below one that does not is not a threshold: every larger size must pay.
    assert wide_threshold({8: 1.6, 16: 1.2, 32: 1.7}, 1.5) == 32


@pytest.fixture
def fashion_bytes() -> bytes:
    manifest = load_manifest(model_folder("fashion-cnn"), verify_files=False)
    return (model_folder("fashion-cnn") / manifest.variants["fp32"].file).read_bytes()


def _images(rows: int) -> dict[str, np.ndarray]:
    return {"pixels": np.random.default_rng(rows).random((rows, 1, 28, 28), dtype=np.float32)}


def test_batches_from_the_threshold_run_on_the_wide_session(fashion_bytes: bytes) -> None:
    from app.runtime import OrtModel, OrtOptions

    model = OrtModel(fashion_bytes, OrtOptions([CPU], 1, 2))
    assert model.wide is not None
    assert model.session_for(128) is model.session  # not calibrated: every batch is narrow
    model.wide_from_rows = 32
    assert model.session_for(31) is model.session
    assert model.session_for(32) is model.wide
    assert model.session_for(128) is model.wide
    small, large = _images(4), _images(32)
    np.testing.assert_allclose(model.run(large)["logits"], model.session.run(None, large)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.run(small)["logits"], model.wide.run(None, small)[0], rtol=1e-4, atol=1e-5)
    assert OrtModel(fashion_bytes, OrtOptions([CPU], 2, 2)).wide is None  # no more threads: no second session


def test_a_batch_the_caller_keeps_narrow_runs_narrow(fashion_bytes: bytes) -> None:
    from app.runtime import OrtModel, OrtOptions

    model = OrtModel(fashion_bytes, OrtOptions([CPU], 1, 2))
    model.wide_from_rows = 32
    assert model.session_for(128, may_go_wide=False) is model.session
    used: list[object] = []
    for session in (model.session, model.wide):
        real = session.run
        session.run = lambda names, feed, real=real, session=session: used.append(session) or real(names, feed)
    model.run(_images(32), may_go_wide=False)
    model.run(_images(32))
    assert used == [model.session, model.wide]


def test_calibration_sets_the_threshold_from_measured_speedups(fashion_bytes: bytes,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sessions timed on a fake clock: the narrow one takes a unit per row, the wide one
    0.9 of that below 64 rows and 0.6 from 64 on; the threshold is 64."""
    import app.runtime
    from app.runtime import OrtModel, OrtOptions

    model = OrtModel(fashion_bytes, OrtOptions([CPU], 1, 2))
    clock = [0.0]

    class Timed:
        def __init__(self, per_row: Callable[[int], float]) -> None:
            self.per_row = per_row

        def run(self, _names: object, inputs: dict[str, np.ndarray]) -> None:
            rows = len(inputs["pixels"])
            clock[0] += rows * self.per_row(rows)

    model.session = Timed(lambda rows: 1.0)  # type: ignore[assignment]
    model.wide = Timed(lambda rows: 0.6 if rows >= 64 else 0.9)  # type: ignore[assignment]
    monkeypatch.setattr(app.runtime.time, "perf_counter", lambda: clock[0])
    model.calibrate(_images, [1, 16, 32, 64, 128])
    assert model.speedups == pytest.approx({1: 1 / 0.9, 16: 1 / 0.9, 32: 1 / 0.9, 64: 1 / 0.6, 128: 1 / 0.6})
    assert model.wide_from_rows == 64


def test_loading_measures_the_threshold_or_takes_the_settings() -> None:
    from app.loading import load_version
    from app.runtime import OrtOptions
    from app.settings import Settings
    from tests.conftest import MODELS

    folder, options = model_folder("fashion-cnn"), OrtOptions([CPU], 1, 2)
    measured = load_version(folder, Settings(model_dir=MODELS), options)
    # Timed at every batch size the batcher can form, the large requests' batches included.
    assert sorted(measured.session.speedups) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert all(s > 0 for s in measured.session.speedups.values())
    fixed = load_version(folder, Settings(model_dir=MODELS, wide_batch_rows=24), options)
    assert fixed.session.wide is not None
    assert (fixed.session.wide_from_rows, fixed.session.speedups) == (24, {})
    assert load_version(folder, Settings(model_dir=MODELS, wide_batch_rows=0), options).session.wide is None
    unwarmed = load_version(folder, Settings(model_dir=MODELS, warmup=False), options)
    assert unwarmed.session.wide_from_rows is None  # nothing measured: no batch runs wide
