"""Compressed variants with ONNX Runtime's tools: int8 (static QDQ or dynamic) and fp16."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxconverter_common import float16
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


class _ArrayReader(CalibrationDataReader):
    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_static_int8(
    fp32: Path, out: Path, calibration: Sequence[dict[str, np.ndarray]], op_types: Sequence[str]
) -> Path:
    """Static int8, QDQ format, per-channel weights, activations calibrated on `calibration`."""
    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(out), _ArrayReader(calibration),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types), calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def quantize_dynamic_int8(fp32: Path, out: Path, op_types: Sequence[str]) -> Path:
    """Dynamic int8: weights quantized offline, activations scaled per batch at run time."""
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8,
                     op_types_to_quantize=list(op_types))
    return out


def convert_fp16(fp32: Path, out: Path) -> Path:
    """fp16 weights and compute for GPUs; inputs and outputs stay fp32 for clients."""
    model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return out
