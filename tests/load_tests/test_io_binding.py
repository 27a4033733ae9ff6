"""The GPU script's IO-binding arms (load_tests/io_binding.py), run on the CPU provider: each
gives the outputs `session.run` gives, for every batch, so the GPU figures they will stand
beside compare like with like."""

from __future__ import annotations

import numpy as np
import pytest

from load_tests import gpu
from load_tests.io_binding import BoundRun, PageLocked
from tests.conftest import MODELS


class HostCopies(PageLocked):
    """PageLocked's bookkeeping without the CUDA runtime: arrays of their own, not pinned
    (pinning needs a GPU), so that the preallocated-output path runs here."""

    def __init__(self) -> None:
        self._pinned = []

    def pin(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array).copy()
        self._pinned.append(array)
        return array

    def close(self) -> None:
        self._pinned.clear()


@pytest.fixture(scope="module")
def model() -> gpu.OrtModel:
    return gpu.session(MODELS, "fashion-cnn", "fp32", ["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_a_bound_batch_answers_as_session_run(model: gpu.OrtModel, batch: int) -> None:
    feed = gpu.image_feed(MODELS, batch)
    expected = model.run(feed)
    for bound in (BoundRun(model, feed), BoundRun(model, feed, HostCopies())):
        first = {name: value.copy() for name, value in bound().items()}
        again = bound()  # bound once, run twice: the preallocated outputs are written anew
        for name, value in expected.items():
            np.testing.assert_array_equal(first[name], value)
            np.testing.assert_array_equal(again[name], value)


def test_the_raw_table_has_each_arm_and_says_why_one_is_missing(model: gpu.OrtModel) -> None:
    row = gpu.raw_rows(model, "fp32", 16, gpu.image_feed(MODELS, 16), 0.05, None)
    assert row["items_per_s"] > 0
    assert row["io_binding_items_per_s"] > 0
    assert "io_binding_pinned_items_per_s" not in row
    text = gpu.markdown({"environment": {"onnxruntime": "x", "available_providers": [], "gpu": "none", "cpus": 2},
                         "raw": [row], "agreement": [], "serve": [],
                         "pinned_unavailable": "the CUDA runtime sees no GPU"})
    assert "| fp32 | CPUExecutionProvider | 16 |" in text
    assert text.split("| fp32 | CPUExecutionProvider | 16 |")[1].split("\n")[0].strip().endswith("| - |")
    assert "Pinned host buffers not measured: the CUDA runtime sees no GPU" in text
