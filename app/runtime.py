"""ONNX Runtime: which providers, which model file, which session options.

Every ORT decision of the service lives here; nothing else imports onnxruntime.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnxruntime as ort

from app.manifest import Manifest, Variant

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_cpus() -> int:
    """CPUs this process may really use: the cgroup quota (a container's --cpus) if any,
    else the affinity mask. os.cpu_count() would report the host's cores."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else count


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def choose_providers(requested: Sequence[str] | None) -> list[str]:
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"providers {missing} are not available; this onnxruntime offers {available}")
        chosen = list(requested)
    else:
        chosen = [CUDA, CPU] if CUDA in available else [CPU]
    if CUDA in chosen:
        load_cuda_libraries()
    return chosen


@functools.cache
def load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (onnxruntime-gpu[cuda,cudnn], as the
    GPU image installs them) before the first CUDA session: the CUDA provider looks for them
    only on the loader's path, and without them it falls back to the CPU."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None:
        preload()


def choose_variant(manifest: Manifest, providers: Sequence[str], requested: str) -> Variant:
    if requested != "auto":
        if requested not in manifest.variants:
            raise ValueError(f"model {manifest.name!r} has no {requested} variant "
                             f"(has {sorted(manifest.variants)})")
        return cast(Variant, requested)
    device: Literal["cpu", "cuda"] = "cuda" if providers[0] == CUDA else "cpu"
    preferred = manifest.preferred_variant.get(device)
    if preferred is not None:
        return preferred
    preference: tuple[Variant, ...] = ("fp16", "fp32") if device == "cuda" else ("int8", "fp32")
    for variant in preference:
        if variant in manifest.variants:
            return variant
    return next(iter(manifest.variants))


@dataclass(frozen=True)
class OrtOptions:
    """How every model's session is made: providers in order, ORT threads per batch."""

    providers: list[str]
    intra_op_threads: int


def ort_options(requested_providers: Sequence[str] | None, intra_op_threads: int,
                inference_threads: int, workers: int = 1) -> OrtOptions:
    """The providers to use, and the ORT threads each batch gets: `intra_op_threads`, or
    when 0, the usable CPUs less one per worker process, shared among every worker's
    inference threads. Each event loop parses every request of its worker and feeds its
    batches: it keeps a core, so that ORT does not oversubscribe it (16 workers on 16 cores:
    one ORT thread each, not 15)."""
    threads = intra_op_threads or max(1, (available_cpus() - workers) // (workers * inference_threads))
    return OrtOptions(choose_providers(requested_providers), threads)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads would steal the CPU that the event loop needs to parse
    # the next requests; on a few cores that costs more than the wake-up latency saved.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def provider_options(provider: str) -> dict[str, Any]:
    if provider == CUDA:
        # A dynamic batcher produces many input shapes; exhaustive cuDNN search would rerun
        # for each new one (onnxruntime#19838). Heuristic search is near-optimal for small
        # models; the arena grows only by what is asked, so memory stays predictable.
        return {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested",
                "do_copy_in_default_stream": "1"}
    return {}


class OrtModel:
    """One loaded ONNX model; `run` is thread-safe and releases the GIL.

    Made from the model's bytes, not its path: the caller hands over bytes it has checked
    (app/manifest.py `read_verified`), so the file cannot change between check and use."""

    def __init__(self, model: bytes, options: OrtOptions) -> None:
        self.session = ort.InferenceSession(
            model, session_options(options.intra_op_threads),
            providers=[(p, provider_options(p)) for p in options.providers],
        )
        self.providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, values, strict=True))
