"""Triton's model metadata and model configuration, as its tools (perf_analyzer, model
analyzer, tritonclient) read them, built from a model's manifest and how it is served."""

from __future__ import annotations

from typing import Any

from app.manifest import Manifest, TensorSpec

PLATFORM = "onnxruntime_onnx"


def triton_shape(shape: list[int]) -> list[int]:
    """One value per item ([-1]) is [-1, 1] to Triton's tools (dims [1] reshaped to []);
    the server takes [N] and [N, 1] alike."""
    return [-1, 1] if shape == [-1] else shape


def model_metadata(manifest: Manifest, versions: list[str], variant: str, providers: list[str]) -> dict[str, Any]:
    """The V2 model metadata, with the variant served, its providers, task and labels as parameters."""
    m = manifest
    return {
        "name": m.name, "versions": versions, "platform": PLATFORM,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": triton_shape(t.shape)} for t in m.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs],
        "parameters": {"variant": variant, "providers": providers, "task": m.task, "labels": m.labels},
    }


def model_config(manifest: Manifest, *, variant: str, device: str, max_batch_size: int, max_queue_delay_s: float,
                 concurrent_batches: int, version_policy: dict[str, Any]) -> dict[str, Any]:
    """Triton's model configuration; dims leave out the batch axis since max_batch_size > 0.
    `device` is "CPU" or "GPU"; `concurrent_batches` are what Triton calls instances."""
    m = manifest
    return {
        "name": m.name, "platform": PLATFORM, "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": max_batch_size,
        "input": _config_tensors(m.inputs), "output": _config_tensors(m.outputs),
        "dynamic_batching": {"max_queue_delay_microseconds": int(max_queue_delay_s * 1e6),
                             "preferred_batch_size": [max_batch_size]},
        "instance_group": [{"name": m.name, "kind": f"KIND_{device}", "count": concurrent_batches}],
        "parameters": {"variant": {"string_value": variant}},
    }


def _config_tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    out = []
    for t in specs:
        entry: dict[str, Any] = {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": triton_shape(t.shape)[1:]}
        if t.shape == [-1]:
            entry["reshape"] = {"shape": []}
        out.append(entry)
    return out
