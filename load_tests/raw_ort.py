"""The ceiling of compute alone: ONNX Runtime in this process, no HTTP, no batcher."""

from __future__ import annotations

import time
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
                for _ in range(3):
                    session.run(None, feed)
                runs, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    session.run(None, feed)
                    runs += 1
                elapsed = time.perf_counter() - start
                results.append({"variant": variant, "threads": threads, "batch": batch,
                                "items_per_s": round(runs * batch / elapsed, 1)})
    return results
