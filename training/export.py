"""ONNX export and the PyTorch-vs-ONNX Runtime parity check."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17


def export_onnx(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """Export in eval mode with named, dynamic axes; the file passes onnx.checker."""
    model.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is the one that handles nn.LSTM with dynamic batch and
        # sequence axes here; its deprecation notice is not actionable for us.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=list(input_names), output_names=list(output_names),
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def ort_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def max_parity_error(model: nn.Module, path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> float:
    """Largest |torch - ORT| over the logits of every feed (each a dict of named inputs)."""
    model.eval()
    session = ort_session(path)
    worst = 0.0
    for feed in feeds:
        expected = model(*(torch.from_numpy(v) for v in feed.values())).numpy()
        (actual,) = session.run(None, feed)
        if actual.shape != expected.shape:
            raise AssertionError(f"ORT shape {actual.shape} != torch shape {expected.shape}")
        worst = max(worst, float(np.abs(actual - expected).max()))
    return worst
