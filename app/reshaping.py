"""Clients' shapes and the graph's, where a model's configuration tells them apart (Triton's
`reshape`: TensorSpec.reshape). Requests are checked against the shapes clients send (the
manifest's `shape`); each request's inputs are then given the graph's shapes before they are
queued, and each batch's outputs the clients' shapes as soon as the model gives them, so
that classification, the answers and their sizes only ever see the clients' shapes.

A reshape keeps the values and their order (numpy's reshape of the rows): no copy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.errors import InferenceFailed, InvalidInput
from app.manifest import Manifest


class Reshaper:
    """The reshapes of one model's tensors; `for_manifest` gives None where there are none,
    so a model without any pays nothing per request."""

    def __init__(self, manifest: Manifest) -> None:
        batches = manifest.batches
        self.inputs = {t.name: (t.item_shape(batches), t.reshape) for t in manifest.inputs if t.reshape is not None}
        self.outputs = {t.name: (t.reshape, t.item_shape(batches)) for t in manifest.outputs if t.reshape is not None}

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> Reshaper | None:
        if any(t.reshape is not None for t in manifest.inputs + manifest.outputs):
            return cls(manifest)
        return None

    def to_graph(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A request's inputs (rows first: a model that does not batch has one) as the graph
        takes them. A dynamic axis can make a request's values too few or too many for the
        graph's shape: that request's 400."""
        return _rows_reshaped(inputs, self.inputs, lambda name, item, dims, graph_dims: InvalidInput(
            f"input {name!r}: an item of shape {item} (dims {dims}) does not make the graph's shape {graph_dims}: "
            f"{np.prod(item, dtype=int)} values"))

    def to_clients(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch's outputs (rows first) as clients get them. Values that do not make the
        declared dims are the model's fault, not the request's."""
        return _rows_reshaped(outputs, self.outputs, lambda name, item, graph_dims, dims: InferenceFailed(
            f"output {name!r}: the model gave items of shape {item} (reshape {graph_dims}), which do not make its "
            f"dims {dims}"))


_Refusal = Callable[[str, list[int], list[int], list[int]], Exception]
"""(tensor name, an item's shape as it came, its declared shape, the shape wanted) -> the error."""


def _rows_reshaped(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[list[int], list[int]]],
                   refusal: _Refusal) -> dict[str, np.ndarray]:
    """`arrays` with each one named in `shapes` (name -> (its declared item shape, the item
    shape wanted)) given the wanted shape, row by row."""
    out = dict(arrays)
    for name, (declared, wanted) in shapes.items():
        array = out.get(name)
        if array is None:
            continue
        try:
            out[name] = array.reshape(len(array), *wanted)
        except ValueError:
            raise refusal(name, list(array.shape[1:]), declared, wanted) from None
    return out
