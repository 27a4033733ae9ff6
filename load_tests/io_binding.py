"""One batch through ONNX Runtime's IO binding, for the raw table of load_tests/gpu.py
(issue 25 point 6: "try IO binding with pinned host buffers; record what pays").

The service hands ONNX Runtime numpy arrays and takes numpy arrays back (`session.run`): on
CUDA, each run copies the batch from pageable host memory to the GPU through a staging
buffer, allocates the outputs on the GPU and copies them back the same way. The ways
measured beside it, each from and to host memory as a served batch must be:
- `BoundRun(model, feed)`: the input bound from host memory, the outputs left on the
  session's device (the GPU on CUDA) and copied out after the run.
- `BoundRun(model, feed, PageLocked())`: the input and preallocated outputs in
  page-locked (pinned) host memory, registered with the CUDA runtime, so that both copies
  are direct DMA; what a server would do with a staging buffer per batch size.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

import numpy as np

from app.runtime import OrtModel

CUDA_RUNTIMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


class PageLocked:
    """Host arrays page-locked with the CUDA runtime's cudaHostRegister (numpy's own memory,
    pinned in place), unregistered by `close`. OSError where there is no CUDA runtime."""

    def __init__(self) -> None:
        self._cudart = _cuda_runtime()
        count = ctypes.c_int(0)
        status = self._cudart.cudaGetDeviceCount(ctypes.byref(count))
        if status != 0 or count.value == 0:  # e.g. 35: no driver, 100: no device
            raise OSError(f"the CUDA runtime sees no GPU (CUDA error {status}, {count.value} devices)")
        self._pinned: list[np.ndarray] = []

    def pin(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array).copy()  # memory of its own, kept alive here
        status = self._cudart.cudaHostRegister(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes), 0)
        if status != 0:
            raise OSError(f"cudaHostRegister failed with CUDA error {status}")
        self._pinned.append(array)
        return array

    def close(self) -> None:
        for array in self._pinned:
            self._cudart.cudaHostUnregister(ctypes.c_void_p(array.ctypes.data))
        self._pinned.clear()


def _cuda_runtime() -> ctypes.CDLL:
    """The CUDA runtime onnxruntime-gpu loaded (its preload_dlls, from the nvidia-* pip
    packages) or any the loader finds."""
    for name in CUDA_RUNTIMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    for root in sys.path:
        for path in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libcudart.so*"))):
            return ctypes.CDLL(path)
    raise OSError("no CUDA runtime (libcudart) here")


class BoundRun:
    """`__call__` runs one batch through an IO binding and returns its outputs as host arrays."""

    def __init__(self, model: OrtModel, feed: dict[str, np.ndarray], page_locked: PageLocked | None = None) -> None:
        self.session = model.session
        self.binding = self.session.io_binding()
        self.names = model.output_names
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.pinned: dict[str, np.ndarray] | None = None
        self.feed = feed
        if page_locked is not None:
            self.feed = {name: page_locked.pin(value) for name, value in feed.items()}
            # bound once: ONNX Runtime copies each run's outputs into these host arrays
            self.pinned = {name: page_locked.pin(np.empty_like(value)) for name, value in model.run(feed).items()}
            for name, value in self.pinned.items():
                self.binding.bind_output(name, "cpu", 0, value.dtype, list(value.shape), value.ctypes.data)

    def __call__(self) -> dict[str, np.ndarray]:
        for name, value in self.feed.items():
            self.binding.bind_cpu_input(name, value)  # bound each run, as each batch is new
        if self.pinned is not None:
            self.session.run_with_iobinding(self.binding)
            return self.pinned
        for name in self.names:
            self.binding.bind_output(name, self.device)
        self.session.run_with_iobinding(self.binding)
        return dict(zip(self.names, self.binding.copy_outputs_to_cpu(), strict=True))
