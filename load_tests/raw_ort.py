"""The ceiling of compute alone: ONNX Runtime in this process, no HTTP, no batcher."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import onnxruntime as ort

from app.runtime import session_options
from load_tests import samples


def raw_throughput(model_dir: Path, seconds: float = 3.0, batches: tuple[int, ...] = (1, 32, 128)
                   ) -> list[dict[str, Any]]:
    folder, manifest = samples.latest(model_dir, "fashion-cnn")
    results = []
    for variant in ("int8", "fp32"):
        for threads in (1, 2):
            options = session_options(threads)
            session = ort.InferenceSession(str(folder / manifest.variants[variant].file), options,
                                           providers=["CPUExecutionProvider"])
            for batch in batches:
                feed = {manifest.inputs[0].name: samples.normalized(batch, model_dir)}
                rate = items_per_s(partial(session.run, None, feed), batch, seconds)
                results.append({"variant": variant, "threads": threads, "batch": batch,
                                "items_per_s": round(rate, 1)})
    return results


def items_per_s(run: Callable[[], object], rows: int, seconds: float, warmup_runs: int = 3) -> float:
    """Items per second of `run` (one batch of `rows`) called back to back for `seconds`."""
    for _ in range(warmup_runs):
        run()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        runs += 1
    return runs * rows / (time.perf_counter() - start)
