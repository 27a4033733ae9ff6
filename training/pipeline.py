"""Runs a model's steps in order, scores its ONNX variants and writes the versioned artifact."""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from app.manifest import BatchingDefaults, Manifest, VariantFile, sha256_of, write_manifest
from training import fashion, report, sentiment
from training.config import CNNConfig, LSTMConfig
from training.export import ort_session
from training.workspace import VARIANTS, Workspace

RECIPES: dict[str, tuple[ModuleType, Callable[..., Any]]] = {
    fashion.NAME: (fashion, CNNConfig),
    sentiment.NAME: (sentiment, LSTMConfig),
}
STEPS = ("train", "prune", "export", "quantize", "evaluate", "package")
# On CPU, ORT's cost per item stops falling at small batches (CNN: about 8 images, one
# thread; LSTM: about 16 sentences), and bigger batches only hold more requests at once:
# at 64 concurrent single-image requests, max 64 let two batches take every request in
# flight and left the event loop idle between them, 16 kept it busy (docs/benchmarks.md).
BATCHING = {fashion.NAME: BatchingDefaults(max_batch_size=16, max_queue_delay_ms=2.0),
            sentiment.NAME: BatchingDefaults(max_batch_size=32, max_queue_delay_ms=2.0)}


def run_step(step: str, name: str, ws: Workspace, config: Any, out: Path, version: int | None) -> None:
    recipe, _ = RECIPES[name]
    if step == "evaluate":
        evaluate(recipe, ws, config)
    elif step == "package":
        package(recipe, ws, out, version)
    else:
        getattr(recipe, step)(ws, config)


def evaluate(recipe: ModuleType, ws: Workspace, config: Any) -> None:
    """Score every variant in ONNX Runtime: accuracy, agreement with fp32, CPU latency."""
    feeds, labels = recipe.scoring_data(ws, config)
    predictions: dict[str, np.ndarray] = {}
    variants: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        session = ort_session(ws.onnx(variant))
        logits = np.concatenate([session.run(None, feed)[0] for feed in feeds])
        predictions[variant] = logits.argmax(1)
        variants[variant] = {
            "accuracy": round(float((predictions[variant] == labels).mean()), 4),
            "agreement_with_fp32": round(float((predictions[variant] == predictions["fp32"]).mean()), 4),
            "size_bytes": ws.onnx(variant).stat().st_size,
            **{f"latency_ms_batch{b}": _latency_ms(session, recipe.latency_feed(feeds, b)) for b in (1, 64)},
        }
    ws.update_record(variants=variants)


def _latency_ms(session: Any, feed: dict[str, np.ndarray], runs: int = 50) -> float:
    """Median wall time of one run, after warm-up, with ORT's default threads (all cores)."""
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 4)


def package(recipe: ModuleType, ws: Workspace, out: Path, version: int | None) -> Path:
    """Copy the variants into models/<name>/<version>/ with a manifest, report and plots."""
    record = ws.record()
    if "variants" not in record:
        raise FileNotFoundError(f"{ws.record_path} has no scores: run the evaluate step first")
    version = version or _next_version(out / recipe.NAME)
    target = out / recipe.NAME / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; pass --version to pick a new one")
    target.mkdir(parents=True)
    files = {}
    for variant in VARIANTS:
        file = f"model.{variant}.onnx"
        shutil.copy2(ws.onnx(variant), target / file)
        scores = record["variants"][variant]
        metrics = {k: v for k, v in scores.items() if k != "size_bytes"}
        metrics.update({k: record["pruned"][k] for k in ("params", "macs")})
        metrics["sparsity"] = record["pruned"]["sparsity"]
        files[variant] = VariantFile(file=file, sha256=sha256_of(target / file),
                                     size_bytes=(target / file).stat().st_size, metrics=metrics)
    for extra in recipe.EXTRA_FILES:
        shutil.copy2(ws.root / extra, target / extra)
    manifest = Manifest(
        name=recipe.NAME, version=version, task=recipe.TASK, description=(recipe.__doc__ or "").strip(),
        labels=list(recipe.LABELS), inputs=recipe.INPUTS, outputs=recipe.OUTPUTS,
        preprocessing=record["preprocessing"], variants=files, batching=BATCHING[recipe.NAME],
        preferred_variant={"cpu": cpu_variant(record["variants"]), "cuda": "fp16"},
        training={k: record.get(k) for k in ("config", "baseline", "pruned", "parity_max_abs_error")},
        data={"sha256": record.get("data_sha256", {})}, packages=_package_versions(),
    )
    write_manifest(target, manifest)
    report.write(target, manifest, record)
    return target


def cpu_variant(scores: dict[str, dict[str, Any]], min_speedup: float = 1.1, max_loss: float = 0.01) -> str:
    """int8 only where it pays: at least `min_speedup` times faster than fp32 at batch 64
    and at most `max_loss` less accurate. On AVX2 CPUs without VNNI, int8 convolutions ran
    slower than fp32 for fashion-cnn, while dynamic int8 ran 1.6x faster for sst2-lstm."""
    fp32, int8 = scores["fp32"], scores.get("int8")
    if int8 is None:
        return "fp32"
    faster = fp32["latency_ms_batch64"] / int8["latency_ms_batch64"] >= min_speedup
    return "int8" if faster and fp32["accuracy"] - int8["accuracy"] <= max_loss else "fp32"


def _next_version(folder: Path) -> int:
    existing = [int(p.name) for p in folder.glob("*") if p.name.isdigit()]
    return max(existing, default=0) + 1


def _package_versions() -> dict[str, str]:
    names = ("torch", "onnx", "onnxruntime", "onnxconverter-common", "numpy")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
