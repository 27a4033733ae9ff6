"""Turning the chunks of one batch into the model's input arrays."""

from __future__ import annotations

import numpy as np


def concatenate_padded(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack parts along the batch axis, zero-padding other axes to the longest part."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        widest = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
        arrays = [a if a.shape[1:] == widest else
                  np.pad(a, [(0, 0)] + [(0, w - d) for w, d in zip(widest, a.shape[1:], strict=True)])
                  for a in arrays]
        out[name] = np.concatenate(arrays)
    return out
