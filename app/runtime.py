"""ONNX Runtime: which providers, which model file, which session options.

Every ORT decision of the service lives here; nothing else imports onnxruntime.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import (
    EngineError,
    EPFail,
    Fail,
    InvalidArgument,
    NotImplemented,
    RuntimeException,
)

from app.errors import ModelRefusedInput
from app.manifest import Manifest, ModelRuntimeOptions, Variant
from app.processes import available_cpus

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_problem(requested: Sequence[str]) -> str | None:
    """Why these providers cannot be had from this onnxruntime, or None."""
    available = ort.get_available_providers()
    missing = [p for p in requested if p not in available]
    if missing:
        return f"providers {missing} are not available; this onnxruntime offers {available}"
    return None


def choose_providers(requested: Sequence[str] | None) -> list[str]:
    if requested:
        problem = providers_problem(requested)
        if problem:
            raise ValueError(problem)
        chosen = list(requested)
    else:
        chosen = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
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
    """How every model's session is made: providers in order, ORT threads per batch, and
    the threads of the wide session that large batches may run on (0: none)."""

    providers: list[str]
    intra_op_threads: int
    wide_threads: int = 0
    wide_batch_rows: int | None = None
    """Batches of at least this many rows run wide; None: measured (`OrtModel.calibrate`); 0: never."""
    custom_op_libraries: tuple[str, ...] = ()
    """Custom operator libraries registered with every session (app/custom_ops.py)."""
    model: ModelRuntimeOptions | None = None
    """The model's own options (its configuration's), over the server's."""
    workers: int = 1
    """Worker processes, each with its own sessions."""
    cpu_share: int = 0
    """ORT threads one worker's batches of a model share, sized automatically (the usable CPUs
    less one per worker, over the workers); 0: intra_op_threads was given, per batch."""
    wide_share: int = 0
    """The same with the event loop's core too: what the wide session is sized from (0: none)."""

    def for_model(self, own: ModelRuntimeOptions | None) -> OrtOptions:
        """These options with a model's own on top: a model that sets its threads runs every
        batch on them, with no wide session (as a server started with intra_op_threads). A
        model with its own instances, on threads sized automatically, divides its worker's
        share of the CPUs among them instead of among the server's inference threads."""
        if own is None:
            return self
        if own.intra_op_threads is not None:
            return replace(self, intra_op_threads=own.intra_op_threads, wide_threads=0, model=own)
        instances = own.per_worker(self.workers)
        if instances is None or not self.cpu_share:
            return replace(self, model=own)
        threads = max(1, self.cpu_share // instances)
        wide = max(1, self.wide_share // instances) if self.wide_share else 0
        return replace(self, intra_op_threads=threads, wide_threads=wide if wide > threads else 0, model=own)


def ort_options(requested_providers: Sequence[str] | None, intra_op_threads: int,
                inference_threads: int, workers: int = 1, custom_op_libraries: Sequence[Path] = ()) -> OrtOptions:
    """The providers to use, and the ORT threads each batch gets: `intra_op_threads`, or
    when 0, the usable CPUs less one per worker process, shared among every worker's
    inference threads. Each event loop parses every request of its worker and feeds its
    batches: it keeps a core, so that ORT does not oversubscribe it (16 workers on 16 cores:
    one ORT thread each, not 15).

    Sized automatically on CPU, a model also gets a wide session with the loop's core too
    (every usable CPU, shared the same way), for batches large enough that the extra
    thread pays (`wide_threshold`): those come from few, large requests, which leave the
    loop little to do."""
    providers = choose_providers(requested_providers)
    libraries = tuple(str(path) for path in custom_op_libraries)
    if intra_op_threads:
        return OrtOptions(providers, intra_op_threads, custom_op_libraries=libraries, workers=workers)
    cpus, share = available_cpus(), workers * inference_threads
    threads = max(1, (cpus - workers) // share)
    wide = max(1, cpus // share) if providers[0] == CPU else 0
    return OrtOptions(providers, threads, wide if wide > threads else 0, custom_op_libraries=libraries,
                      workers=workers, cpu_share=max(1, (cpus - workers) // workers),
                      wide_share=max(1, cpus // workers) if providers[0] == CPU else 0)


def required_speedup(threads: int, wide_threads: int) -> float:
    """How much faster than the narrow session the wide one must run a batch to be used:
    half the ideal gain of its extra threads. Those threads are the event loop's core, so
    a batch that gains less would slow the requests the loop is parsing meanwhile more
    than it speeds up itself."""
    return 1 + (wide_threads / threads - 1) / 2


def wide_threshold(speedups: dict[int, float], required: float) -> int | None:
    """The smallest batch size from which the wide session is at least `required` times
    faster at that size and every larger one measured; None: at none of them."""
    threshold = None
    for rows in sorted(speedups, reverse=True):
        if speedups[rows] < required:
            break
        threshold = rows
    return threshold


_RUN_FAILURES = (Fail, RuntimeException, EngineError, EPFail, NotImplemented)
"""What ONNX Runtime raises for a run that failed (InvalidArgument apart)."""


def _ort_message(error: Exception) -> str:
    """ORT's message without its code prefix ("[ONNXRuntimeError] : 1 : FAIL : ")."""
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : (\w+ : )?", "", str(error))


_GRAPH_OPTIMIZATION = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                       "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session_options(threads: int, folder: Path | None = None, custom_op_libraries: Sequence[str] = (),
                    own: ModelRuntimeOptions | None = None) -> ort.SessionOptions:
    """`folder`: where the model's external data files lie (a model made from bytes has no
    path of its own, and ONNX Runtime would look for them in the working directory).
    `own`: the model's own options, each set one over the server's."""
    own = own or ModelRuntimeOptions()
    options = ort.SessionOptions()
    for library in custom_op_libraries:
        options.register_custom_ops_library(library)
    options.graph_optimization_level = _GRAPH_OPTIMIZATION[own.graph_optimization or "all"]
    options.intra_op_num_threads = threads
    parallel = own.execution_mode == "parallel"
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = (own.inter_op_threads or threads) if parallel else 1
    if own.memory_arena is not None:
        options.enable_cpu_mem_arena = own.memory_arena
    if own.memory_pattern is not None:
        options.enable_mem_pattern = own.memory_pattern
    # Spinning worker threads would steal the CPU that the event loop needs to parse
    # the next requests; on a few cores that costs more than the wake-up latency saved.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # FATAL only: a run that fails raises, and the server logs it (a client's 400 at debug);
    # ORT's own ERROR line for each would let a client fill the log with bad values.
    options.log_severity_level = 4
    if folder is not None:
        # Weights kept beside the graph (ONNX's external data: every graph over 2 GB, and many
        # exporters' output) are read from here; ONNX Runtime refuses a path that leaves it.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
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
    (app/manifest.py `read_verified`), so the file cannot change between check and use.
    Tensors the graph keeps in external data files are read from `folder`, the version's.
    With `options.wide_threads` (CPU), a second session of the same bytes runs the batches
    of at least `wide_from_rows` rows, once `calibrate` has measured where that pays."""

    def __init__(self, model: bytes, options: OrtOptions, folder: Path | None = None) -> None:
        providers = [(p, provider_options(p)) for p in options.providers]
        libraries = options.custom_op_libraries
        self.session = ort.InferenceSession(
            model, session_options(options.intra_op_threads, folder, libraries, options.model), providers=providers)
        self.threads = options.intra_op_threads
        self.wide: ort.InferenceSession | None = None
        self.wide_threads = 0
        wanted = options.wide_batch_rows != 0 and options.wide_threads > options.intra_op_threads
        if wanted and options.providers[0] == CPU:
            self.wide = ort.InferenceSession(
                model, session_options(options.wide_threads, folder, libraries, options.model), providers=providers)
            self.wide_threads = options.wide_threads
        self.measure_threshold = options.wide_batch_rows is None
        # None: every batch runs on the narrow session (until `calibrate` has measured)
        self.wide_from_rows: int | None = options.wide_batch_rows or None
        self.speedups: dict[int, float] = {}  # batch rows -> narrow time / wide time, as measured
        self.known_good: dict[str, np.ndarray] | None = None
        """Inputs the model has answered (its warm-up's): where a run fails, whether it still
        answers these says whose fault the failure was."""
        self.providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]

    def session_for(self, rows: int, may_go_wide: bool = True) -> ort.InferenceSession:
        if may_go_wide and self.wide is not None and self.wide_from_rows is not None and rows >= self.wide_from_rows:
            return self.wide
        return self.session

    def run(self, inputs: dict[str, np.ndarray], may_go_wide: bool = True) -> dict[str, np.ndarray]:
        """The outputs; on the wide session where the batch is large enough and the caller
        lets it (app/loading.py keeps batches of many small requests off it)."""
        first = next(iter(inputs.values()), None)
        rows = len(first) if first is not None and first.ndim else 1  # a scalar input: a model that does not batch
        try:
            values = self.session_for(rows, may_go_wide).run(self.output_names, inputs)
        except InvalidArgument as e:
            # Shapes and types were checked against the graph before: what is left is a value
            # the model refuses, which is the request's (app/batching/runner.py isolates it).
            raise ModelRefusedInput(f"the model refused the input: {_ort_message(e)}") from e
        except _RUN_FAILURES as e:
            # Kernels report a value they cannot take (TopK's k past the axis, a shape a
            # Reshape cannot make, an allocation too large) as a failure of their own. If the
            # model still answers what it answered before, the input was at fault: the
            # request's 400, which does not count toward the failure breaker, so a client
            # sending such values cannot make the model rest for everyone.
            if self.known_good is None or not self._answers(self.known_good):
                raise
            raise ModelRefusedInput(f"the model failed on the input: {_ort_message(e)}") from e
        return dict(zip(self.output_names, values, strict=True))

    def _answers(self, inputs: dict[str, np.ndarray]) -> bool:
        try:
            self.session.run(self.output_names, inputs)
        except Exception:  # whatever ORT raises: it does not answer now
            return False
        return True

    def calibrate(self, make_inputs: Callable[[int], dict[str, np.ndarray]], sizes: Sequence[int],
                  repeats: int = 5) -> None:
        """Time both sessions at each batch size (best of `repeats`, alternating, so that a
        noisy moment hits both) and set `wide_from_rows` from the measured speedups; nothing
        without a wide session or where the threshold was given."""
        if self.wide is None or not self.measure_threshold:
            return
        for rows in sizes:
            inputs = make_inputs(rows)
            narrow = wide = math.inf
            for _ in range(repeats):
                narrow = min(narrow, self._timed(self.session, inputs))
                wide = min(wide, self._timed(self.wide, inputs))
            self.speedups[rows] = narrow / wide
        self.wide_from_rows = wide_threshold(self.speedups, required_speedup(self.threads, self.wide_threads))

    def _timed(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> float:
        started = time.perf_counter()
        session.run(self.output_names, inputs)
        return time.perf_counter() - started
