"""A drop-in model's configuration, completed from its ONNX graph: `models/<name>/<version>/
model.onnx` with no manifest is served tensors in, tensors out (the V2 protocol), as
Triton completes a model configuration it was not given.

Whether the first axis is a batch axis is decided, not guessed: it must be dynamic on
every input and output, and a batch of two rows must give what the two rows give alone
(`check_batches`, run at load on generated inputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from app.manifest import (
    DATATYPES,
    TENSORS_TASK,
    BatchingDefaults,
    Manifest,
    TensorSpec,
    VariantFile,
)

DROP_IN_FILE = "model.onnx"
# ONNX Runtime's type names and the V2 datatype of each (strings are not served yet): ORT
# says numpy's names but for these two.
_ORT_NAMES = {"float32": "float", "float64": "double"}
ORT_TYPES = {f"tensor({_ORT_NAMES.get(numpy, numpy)})": v2 for v2, numpy in DATATYPES.items()}
DROP_IN_BATCHING = BatchingDefaults(max_batch_size=16, max_queue_delay_ms=2.0)
"""A drop-in model's batching until a manifest or the settings say otherwise."""
UNPADDED_BATCHING = BatchingDefaults(max_batch_size=1, max_queue_delay_ms=0.0)
"""A drop-in with a dynamic axis besides the first: requests of other lengths would be
zero-padded to the longest in their batch, which only a model that masks its padding (as
the shipped LSTM does, with its lengths input) answers alike; so each row runs alone."""
_SIZE_OF_DYNAMIC_AXES = 3  # the length given to a dynamic non-batch axis in the generated inputs


class GraphError(ValueError):
    """A graph this server cannot serve as a drop-in, with why."""


def complete(session: ort.InferenceSession, name: str, version: int, model: bytes, sha256: str) -> Manifest:
    """The manifest a drop-in model would have: its tensors from the graph, the V2-only
    tensors task, the default batching. GraphError where it cannot be served so."""
    inputs = [_spec(node, "input") for node in session.get_inputs()]
    outputs = [_spec(node, "output") for node in session.get_outputs()]
    if not inputs:
        raise GraphError("the graph has no inputs")
    padded = any(-1 in spec.shape[1:] for spec in inputs)
    return Manifest(name=name, version=version, task=TENSORS_TASK, inputs=inputs, outputs=outputs,
                    description=f"{name}: a drop-in {DROP_IN_FILE}, its configuration completed from the graph",
                    variants={"fp32": VariantFile(file=DROP_IN_FILE, sha256=sha256, size_bytes=len(model))},
                    preferred_variant={"cpu": "fp32", "cuda": "fp32"},
                    batching=UNPADDED_BATCHING if padded else DROP_IN_BATCHING)


def _spec(node: Any, kind: str) -> TensorSpec:
    datatype = ORT_TYPES.get(node.type)
    if datatype is None:
        raise GraphError(f"{kind} {node.name!r} is a {node.type}, which is not served (V2 datatypes: "
                         f"{sorted(set(ORT_TYPES.values()))})")
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in node.shape]
    if not shape:
        raise GraphError(f"{kind} {node.name!r} is a scalar: a batched model's tensors have a first, batch axis")
    if shape[0] != -1:
        raise GraphError(f"{kind} {node.name!r} has a fixed first axis of {shape[0]}: the model does not batch, "
                         "and models that do not batch (Triton's max_batch_size 0) are not served yet")
    return TensorSpec(name=node.name, datatype=datatype, shape=shape)


def generated_inputs(manifest: Manifest, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of `rows` rows for a check: small values (integers 0 and 1, which any index or
    count input accepts), every dynamic axis but the first of a fixed small length."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in manifest.inputs:
        shape = [rows] + [_SIZE_OF_DYNAMIC_AXES if d == -1 else d for d in spec.shape[1:]]
        dtype = np.dtype(spec.numpy_dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return out


def check_batches(session: ort.InferenceSession, manifest: Manifest) -> str | None:
    """None where a batch of two rows answers what each row answers alone (the first axis
    is a batch axis), else why not."""
    pair = generated_inputs(manifest, 2)
    names = [o.name for o in manifest.outputs]
    try:
        together = session.run(names, pair)
        alone = [session.run(names, {k: v[i : i + 1] for k, v in pair.items()}) for i in range(2)]
    except Exception as e:  # ORT's own exception types: a graph that cannot run on such inputs
        return f"it failed on generated inputs of 1 and 2 rows: {type(e).__name__}: {e}"
    for n, name in enumerate(names):
        joined = np.concatenate([alone[0][n], alone[1][n]])
        if together[n].shape != joined.shape or not np.allclose(together[n], joined, rtol=1e-4, atol=1e-5,
                                                                equal_nan=True):
            return (f"output {name!r} for a batch of 2 differs from the two rows run alone: the first axis is "
                    "not a batch axis (models that do not batch are not served yet)")
    return None


def disagreements(session: ort.InferenceSession, manifest: Manifest) -> list[str]:
    """Where a manifest's tensors and the graph it describes differ: names, datatypes,
    ranks and fixed dimensions (a -1 the graph fixes promises clients what the model
    cannot take). Empty where they agree."""
    found = []
    for kind, specs, nodes in (("input", manifest.inputs, session.get_inputs()),
                               ("output", manifest.outputs, session.get_outputs())):
        graph = {node.name: node for node in nodes}
        for spec in specs:
            node = graph.get(spec.name)
            if node is None:
                found.append(f"{kind} {spec.name!r} is not in the graph, whose {kind}s are {sorted(graph)}")
                continue
            datatype = ORT_TYPES.get(node.type, node.type)
            if datatype != spec.datatype:
                found.append(f"{kind} {spec.name!r} is {datatype} in the graph, {spec.datatype} in the manifest")
            if len(node.shape) != len(spec.shape):
                found.append(f"{kind} {spec.name!r} has rank {len(node.shape)} in the graph ({node.shape}), "
                             f"{len(spec.shape)} in the manifest ({spec.shape})")
                continue
            for axis, (dim, declared) in enumerate(zip(node.shape, spec.shape, strict=True)):
                if isinstance(dim, int) and dim > 0 and declared != dim:
                    found.append(f"{kind} {spec.name!r} axis {axis} is {dim} in the graph, {declared} in the manifest")
        if kind == "input":
            undeclared = sorted(set(graph) - {spec.name for spec in specs})
            if undeclared:
                found.append(f"graph inputs {undeclared} are not declared in the manifest")
    return found
