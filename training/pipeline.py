"""Runs a model's steps in order, scores its ONNX variants and writes the versioned artifact."""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.manifest import (
    BatchingDefaults,
    FileDigest,
    Manifest,
    VariantFile,
    latest_version,
    sha256_of,
    write_manifest,
)
from training import fashion, report, sentiment
from training.export import ort_session
from training.recipe import Recipe
from training.workspace import VARIANTS, Workspace

RECIPES: dict[str, Recipe] = {r.name: r for r in (fashion.RECIPE, sentiment.RECIPE)}
STEPS = ("train", "prune", "distill", "export", "quantize", "evaluate", "package")
# The models a build compares (checkpoint name, record key): the teacher, the trained
# model before pruning, the pruned student without and with distillation.
STAGES = (("teacher", "teacher"), ("trained", "baseline"), ("pruned", "pruned"), ("distilled", "distilled"))


def run_step(step: str, recipe: Recipe, ws: Workspace, config: Any, out: Path, version: int | None) -> None:
    steps = {"train": recipe.train, "prune": recipe.prune, "distill": recipe.distill, "export": recipe.export,
             "quantize": recipe.quantize,
             "evaluate": lambda ws, config: evaluate(recipe, ws, config),
             "package": lambda ws, config: package(recipe, ws, config, out, version)}
    steps[step](ws, config)


def evaluate(recipe: Recipe, ws: Workspace, config: Any) -> None:
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
    ws.update_record(variants=variants, stages=compare_stages(recipe, ws, config, feeds, labels))


def compare_stages(recipe: Recipe, ws: Workspace, config: Any, feeds: list[dict[str, np.ndarray]],
                   labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every stage this build made, exported to ONNX fp32 and scored the same way as the
    served variants: accuracy, size, compute and CPU latency side by side."""
    record = ws.record()
    stages = {}
    for stage, key in STAGES:
        if key not in record:
            continue
        # The served student is the fp32 file the export step wrote; the others are exported here.
        path = ws.onnx("fp32") if stage == config.served_student else recipe.export_stage(
            ws, stage, config, ws.root / f"{stage}.fp32.onnx")
        session = ort_session(path)
        logits = np.concatenate([session.run(None, feed)[0] for feed in feeds])
        stages[stage] = {
            "accuracy": round(float((logits.argmax(1) == labels).mean()), 4),
            "params": record[key]["params"], "macs": record[key]["macs"],
            **{f"latency_ms_batch{b}": _latency_ms(session, recipe.latency_feed(feeds, b)) for b in (1, 64)},
        }
    return stages


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


def package(recipe: Recipe, ws: Workspace, config: Any, out: Path, version: int | None) -> Path:
    """Copy the variants into models/<name>/<version>/ with a manifest, report and plots."""
    record = ws.record()
    if "variants" not in record:
        raise FileNotFoundError(f"{ws.record_path} has no scores: run the evaluate step first")
    version = version or _next_version(out / recipe.name)
    target = out / recipe.name / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; pass --version to pick a new one")
    target.mkdir(parents=True)
    files = {}
    for variant in VARIANTS:
        file = f"model.{variant}.onnx"
        shutil.copy2(ws.onnx(variant), target / file)
        scores = record["variants"][variant]
        metrics = {k: v for k, v in scores.items() if k != "size_bytes"}
        served = record[config.served_student]
        metrics.update({k: served[k] for k in ("params", "macs", "sparsity")})
        files[variant] = VariantFile(file=file, sha256=sha256_of(target / file),
                                     size_bytes=(target / file).stat().st_size, metrics=metrics)
    extra_files = {}
    for extra in recipe.extra_files:
        shutil.copy2(ws.root / extra, target / extra)
        extra_files[extra] = FileDigest(sha256=sha256_of(target / extra), size_bytes=(target / extra).stat().st_size)
    batching = BatchingDefaults(max_batch_size=config.max_batch_size, max_queue_delay_ms=config.max_queue_delay_ms)
    manifest = Manifest(
        name=recipe.name, version=version, task=recipe.task, description=recipe.description,
        labels=list(recipe.labels), inputs=recipe.inputs, outputs=recipe.outputs,
        preprocessing=record["preprocessing"], variants=files, extra_files=extra_files, batching=batching,
        preferred_variant={"cpu": cpu_variant(record["variants"]), "cuda": "fp16"},
        training={"student": config.served_student,
                  **{k: record.get(k) for k in ("config", "baseline", "pruned", "teacher", "distilled", "stages",
                                                "parity_max_abs_error")}},
        data={"sha256": record.get("data_sha256", {})}, packages=_package_versions(),
    )
    write_manifest(target, manifest)
    report.write(target, manifest, record)
    return target


def cpu_variant(scores: dict[str, dict[str, Any]], min_speedup: float = 1.1, max_loss: float = 0.01) -> str:
    """int8 only where it pays: at least `min_speedup` times faster than fp32 at batch 64
    and at most `max_loss` less accurate: on CPUs without VNNI, int8 convolutions can run
    slower than fp32, while dynamic int8 LSTMs run faster (each manifest records both)."""
    fp32, int8 = scores["fp32"], scores.get("int8")
    if int8 is None:
        return "fp32"
    faster = fp32["latency_ms_batch64"] / int8["latency_ms_batch64"] >= min_speedup
    return "int8" if faster and fp32["accuracy"] - int8["accuracy"] <= max_loss else "fp32"


def _next_version(model_root: Path) -> int:
    latest = latest_version(model_root)
    return int(latest.name) + 1 if latest else 1


def _package_versions() -> dict[str, str]:
    names = ("torch", "onnx", "onnxruntime", "onnxconverter-common", "numpy")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
