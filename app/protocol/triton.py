"""Triton's model metadata and model configuration, as its tools (perf_analyzer, model
analyzer, tritonclient) read them, built from a model's manifest and how it is served."""

from __future__ import annotations

from typing import Any

from app.manifest import (
    TRITON_EXECUTION_MODES,
    TRITON_GRAPH_LEVELS,
    TRITON_ORT_PARAMETERS,
    Manifest,
    ModelRuntimeOptions,
    QueuePolicy,
    Sequences,
    TensorSpec,
    triton_type,
)

PLATFORM = "onnxruntime_onnx"
ENSEMBLE = "ensemble"
SERVER_NAME = "ortserve"
EXTENSIONS = ["binary_tensor_data", "classification", "logging", "model_configuration", "model_repository",
              "model_repository(unload_dependents)", "schedule_policy", "sequence", "statistics", "trace"]
"""The protocol extensions the server metadata lists, by Triton's names (HTTP and gRPC)."""


def extensions(shared_memory: bool) -> list[str]:
    """The extensions served: system shared memory where the server allows it."""
    return sorted([*EXTENSIONS, "system_shared_memory"]) if shared_memory else EXTENSIONS


def triton_shape(shape: list[int], batches: bool = True) -> list[int]:
    """One value per item ([-1]) is [-1, 1] to Triton's tools (dims [1] reshaped to []);
    the server takes [N] and [N, 1] alike. A scalar of a model that does not batch is [1]
    (Triton's dims cannot be empty: perf_analyzer cannot set an empty shape); the server
    takes [] and [1] alike. Anything else as declared."""
    if batches and shape == [-1]:
        return [-1, 1]
    if not batches and shape == []:
        return [1]
    return shape


def _reshaped(shape: list[int], batches: bool) -> bool:
    """Whether Triton's configuration gives `shape` as dims [1] reshaped to []."""
    return shape == ([-1] if batches else [])


def model_metadata(manifest: Manifest, versions: list[str], variant: str, providers: list[str]) -> dict[str, Any]:
    """The V2 model metadata, with the variant served, its providers, task and labels as parameters."""
    m = manifest
    return {
        "name": m.name, "versions": versions, "platform": ENSEMBLE if m.ensemble is not None else PLATFORM,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": triton_shape(t.shape, m.batches)}
                   for t in m.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs],
        "parameters": {"variant": variant, "providers": providers, "task": m.task, "labels": m.labels},
    }


def model_config(manifest: Manifest, *, variant: str, device: str, max_batch_size: int, max_queue_delay_s: float,
                 concurrent_batches: int, version_policy: dict[str, Any], told_by: str = "",
                 ignored: dict[str, str] | None = None, verified: bool = True, cached: bool = False) -> dict[str, Any]:
    """Triton's model configuration; dims leave out the batch axis where max_batch_size > 0
    (0: the model does not batch, dims as declared). `device` is "CPU" or "GPU";
    `concurrent_batches` are what Triton calls instances (every worker's together). Its
    parameters say what Triton's fields cannot: how the batching was chosen (with the measured
    figures), what the configuration was completed from, and the Triton fields ignored. `cached`: its answers
    are kept in the server's response cache."""
    m = manifest
    config: dict[str, Any] = {
        "name": m.name, "platform": PLATFORM, "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": max_batch_size if m.batches else 0,
        "input": _config_tensors(m.inputs, m.batches), "output": _config_tensors(m.outputs, m.batches),
    }
    if m.sequence is not None:  # Triton's scheduling choice is one of the two
        config["sequence_batching"] = _sequence_batching(m.sequence, max_batch_size, max_queue_delay_s)
    elif m.batches:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_queue_delay_s * 1e6),
                                      "preferred_batch_size": [max_batch_size]}
        if m.batching.queue is not None:  # Triton's words; a request's own timeout always applies
            config["dynamic_batching"]["default_queue_policy"] = _queue_policy(m.batching.queue)
        priorities = m.batching.priorities
        if priorities is not None:
            config["dynamic_batching"] |= {"priority_levels": priorities.levels,
                                           "default_priority_level": priorities.default_level}
            if priorities.queues:
                config["dynamic_batching"]["priority_queue_policy"] = {
                    str(level): _queue_policy(policy) for level, policy in sorted(priorities.queues.items())}
    config["instance_group"] = [{"name": m.name, "kind": f"KIND_{device}", "count": concurrent_batches}]
    parameters = {"variant": variant, "task": m.task, "scores": m.scores, "verified": str(verified).lower(),
                  "configuration": "the manifest" if verified else f"the graph{' + ' + told_by if told_by else ''}",
                  "batching": m.batching.reason or "given by the manifest"}
    if m.batching.cost_per_item_ms:
        parameters["cost_per_item_ms"] = ", ".join(f"{n}: {c:g}" for n, c in m.batching.cost_per_item_ms.items())
    if ignored:
        parameters["ignored"] = "; ".join(f"{k}: {why}" for k, why in ignored.items())
    _say_cache(config, parameters, m, cached)
    if m.onnxruntime is not None:  # said back as Triton's ONNX Runtime backend reads them
        parameters |= _onnxruntime_parameters(m.onnxruntime)
        if m.onnxruntime.graph_optimization is not None:
            config["optimization"] = {"graph": {"level": _graph_level(m.onnxruntime.graph_optimization)}}
    if m.labels:
        parameters["labels"] = ",".join(m.labels)
    if m.description:
        parameters["description"] = m.description
    config["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return config


_CONTROL_KINDS = {"start": "CONTROL_SEQUENCE_START", "end": "CONTROL_SEQUENCE_END", "ready": "CONTROL_SEQUENCE_READY",
                  "correlation_id": "CONTROL_SEQUENCE_CORRID"}
_FALSE_TRUE: dict[str, tuple[str, type]] = {"INT32": ("int32_false_true", int), "FP32": ("fp32_false_true", float),
                                            "BOOL": ("bool_false_true", bool)}
"""A flag control's datatype: Triton's field for its false and true values, and their type."""


def _sequence_batching(sequence: Sequences, max_batch_size: int, max_queue_delay_s: float) -> dict[str, Any]:
    """A sequence model's batching in Triton's words: the oldest strategy, which batches the
    requests of any sequences as they come, as this server does."""
    controls = []
    for c in sequence.controls:
        control: dict[str, Any] = {"kind": _CONTROL_KINDS[c.kind]}
        if c.false_true is None:
            control["data_type"] = triton_type(c.datatype)
        else:
            field, kind = _FALSE_TRUE[c.datatype]
            control[field] = [kind(v) for v in c.false_true]
        controls.append({"name": c.input, "control": [control]})
    states = []
    for s in sequence.states:
        state: dict[str, Any] = {"input_name": s.input, "output_name": s.output, "data_type": triton_type(s.datatype),
                                 "dims": s.shape}
        if s.initial_shape is not None:
            state["initial_state"] = [{"data_type": triton_type(s.datatype), "dims": s.initial_shape,
                                       "zero_data": True, "name": f"{s.input}_initial"}]
        states.append(state)
    return {"max_sequence_idle_microseconds": round(sequence.idle_ms * 1000), "control_input": controls,
            "state": states, "oldest": {"max_candidate_sequences": sequence.max_sequences,
                                        "preferred_batch_size": [max_batch_size],
                                        "max_queue_delay_microseconds": int(max_queue_delay_s * 1e6)}}


def _queue_policy(policy: QueuePolicy) -> dict[str, Any]:
    return {"timeout_action": policy.timeout_action.upper(),
            "default_timeout_microseconds": round(policy.timeout_ms * 1000),
            "allow_timeout_override": True, "max_queue_size": policy.max_requests}


def _say_cache(config: dict[str, Any], parameters: dict[str, str], manifest: Manifest, cached: bool) -> None:
    """Whether its answers are kept (Triton's response_cache), and where the configuration asks
    for it on a server without a cache, that it is not."""
    if cached:
        config["response_cache"] = {"enable": True}
    elif manifest.response_cache:
        parameters["response_cache"] = "enabled by the configuration, but the server has no cache (response_cache_bytes 0)"


def ensemble_config(manifest: Manifest, *, version_policy: dict[str, Any], told_by: str,
                    ignored: dict[str, str] | None = None, cached: bool = False) -> dict[str, Any]:
    """Triton's configuration of an ensemble: its tensors and its steps (model_version -1:
    the newest served), no batching or instances of its own."""
    m = manifest
    assert m.ensemble is not None
    steps = [{"model_name": s.model, "model_version": -1 if s.version is None else s.version,
              "input_map": s.inputs, "output_map": s.outputs} for s in m.ensemble]
    parameters = {"task": m.task, "configuration": told_by}
    if ignored:
        parameters["ignored"] = "; ".join(f"{k}: {why}" for k, why in ignored.items())
    if m.description:
        parameters["description"] = m.description
    config: dict[str, Any] = {
        "name": m.name, "platform": ENSEMBLE, "version_policy": version_policy, "max_batch_size": m.batching.max_batch_size,
        "input": _config_tensors(m.inputs, m.batches), "output": _config_tensors(m.outputs, m.batches),
        "ensemble_scheduling": {"step": steps}}
    _say_cache(config, parameters, m, cached)
    config["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return config


def _onnxruntime_parameters(own: ModelRuntimeOptions) -> dict[str, str]:
    """A model's own ONNX Runtime options that are Triton parameters, as their string values."""
    parameters = {}
    for key, field in TRITON_ORT_PARAMETERS.items():
        value = getattr(own, field)
        if value is not None:
            parameters[key] = (str(TRITON_EXECUTION_MODES.index(value)) if field == "execution_mode"
                               else str(value).lower())
    return parameters


def _graph_level(name: str) -> int:
    return next(level for level, named in TRITON_GRAPH_LEVELS.items() if named == name)


def _config_tensors(specs: list[TensorSpec], batches: bool) -> list[dict[str, Any]]:
    out = []
    for t in specs:
        dims = triton_shape(t.shape)[1:] if batches else triton_shape(t.shape, batches=False)
        entry: dict[str, Any] = {"name": t.name, "data_type": triton_type(t.datatype), "dims": dims}
        if _reshaped(t.shape, batches):
            entry["reshape"] = {"shape": []}
        elif t.reshape is not None:
            entry["reshape"] = {"shape": t.reshape}
        out.append(entry)
    return out
