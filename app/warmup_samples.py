"""Triton's model_warmup: the requests a configuration gives to warm its model up with, as the
arrays the graph takes, for a model whose generated warm-up inputs (zeros and ones) it would
refuse: an input that is a shape, an index into something, a k.

A sample gives every input of the model (Triton's dims, without the batch axis where the
model batches) and its values: all zero, random (floats in [0, 1), integers and BOOL 0 or
1: what a model most often takes), or a file in the model's `warmup` folder, raw and
row-major, holding one row (repeated for `batch_size`) or all of them; BYTES elements as
Triton writes them, a 4-byte little-endian length before each. Checked against the model's
inputs: a sample that does not fit is the version's load error, with why.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from app.graph import InputMaker
from app.manifest import Manifest, TensorSpec, outside
from app.model_facts import WarmupInput, WarmupSample
from app.sequences import first_steps

WARMUP_FOLDER = "warmup"


class WarmupError(ValueError):
    """A warm-up sample that does not fit the model, or whose file cannot be read."""


def sample_arrays(sample: WarmupSample, manifest: Manifest, model_folder: Path) -> dict[str, np.ndarray]:
    """The sample's inputs as the graph takes them: a batch of `batch_size` rows where the
    model batches, else the tensors as declared."""
    where = f"model_warmup {sample.name!r}" if sample.name else "model_warmup"
    expected = {spec.name for spec in manifest.inputs}
    if set(sample.inputs) != expected:
        raise WarmupError(f"{where} gives inputs {sorted(sample.inputs)}; the model takes {sorted(expected)}")
    batches = manifest.batches
    if not batches and sample.batch_size != 1:
        raise WarmupError(f"{where}: batch_size {sample.batch_size}, but the model does not batch (1 or unset)")
    rows = sample.batch_size if batches else 1
    arrays = {spec.name: _array(spec, sample.inputs[spec.name], rows, batches, model_folder, f"{where}, input "
                                f"{spec.name!r}") for spec in manifest.inputs}
    if manifest.sequence is not None:  # the first steps of as many sequences, as the server fills them
        arrays |= first_steps(manifest.sequence, rows)
    return arrays


def sample_inputs(sample: WarmupSample, model_folder: Path) -> InputMaker:
    """Inputs of so many rows made of the sample's, in turn (the graph checks of a model
    completed from its file, app/completion.py); as the sample is where the model does not batch.
    The sample is read once for each way of batching: the candidate manifests completion tries
    differ in their batching only, never in their tensors."""
    read: dict[bool, dict[str, np.ndarray]] = {}

    def make(manifest: Manifest, rows: int) -> dict[str, np.ndarray]:
        if manifest.batches not in read:
            read[manifest.batches] = sample_arrays(sample, manifest, model_folder)
        arrays = read[manifest.batches]
        return rows_of(arrays, rows) if manifest.batches else arrays
    return make


def rows_of(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A batch of `rows` rows from the rows of `arrays`, repeated in turn."""
    return {name: np.take(array, np.arange(rows) % len(array), axis=0) for name, array in arrays.items()}


def _array(spec: TensorSpec, given: WarmupInput, rows: int, batches: bool, model_folder: Path,
           where: str) -> np.ndarray:
    if given.datatype != spec.datatype:
        raise WarmupError(f"{where}: data_type {given.datatype}, the model's is {spec.datatype}")
    item = spec.item_shape(batches)
    fits = len(given.dims) == len(item) and all(g >= 1 and d in (-1, g) for d, g in zip(item, given.dims, strict=True))
    if not fits:
        raise WarmupError(f"{where}: dims {given.dims} do not fit the model's {item} (-1: any size)")
    per_row = math.prod(given.dims)
    values = _values(spec, given, per_row, rows, model_folder, where)
    if len(values) == per_row:
        values = np.tile(values, rows)
    shape = given.dims if spec.reshape is None else spec.graph_item_shape(batches)  # reshaped as requests are
    return values.reshape([rows, *shape] if batches else shape)


def _values(spec: TensorSpec, given: WarmupInput, per_row: int, rows: int, model_folder: Path,
            where: str) -> np.ndarray:
    """Flat values: one row's, or every row's where a file holds them all."""
    dtype = np.dtype(object if spec.datatype == "BYTES" else spec.numpy_dtype)
    if given.data == "zero":
        return np.full(per_row, "" if dtype.kind == "O" else 0, dtype=dtype)
    if given.data == "random":
        generator = np.random.default_rng(0)
        if dtype.kind == "O":
            raise WarmupError(f"{where}: random_data for BYTES: give its strings in an input_data_file")
        if dtype.kind == "f":
            return generator.random(per_row).astype(dtype)
        return generator.integers(0, 2, per_row).astype(dtype)
    assert given.file is not None
    folder = model_folder / WARMUP_FOLDER
    leaves = outside(folder, given.file, "the model's warmup folder")
    if leaves is not None:
        raise WarmupError(f"{where}: input_data_file {given.file!r} {leaves}")
    try:
        data = (folder / given.file).read_bytes()
    except OSError as e:
        raise WarmupError(f"{where}: input_data_file {folder / given.file} cannot be read: {e.strerror or e}") from e
    if dtype.kind == "O":
        values = _strings(data, where)
    elif len(data) % dtype.itemsize:
        raise WarmupError(f"{where}: input_data_file {given.file!r} is {len(data)} bytes, not a whole number of "
                          f"{spec.datatype} values ({dtype.itemsize} bytes each)")
    else:
        values = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    if len(values) not in (per_row, per_row * rows):
        raise WarmupError(f"{where}: input_data_file {given.file!r} holds {len(values)} values; one row of dims "
                          f"{given.dims} is {per_row}" + (f", {rows} rows {per_row * rows}" if rows > 1 else ""))
    return values


def _strings(data: bytes, where: str) -> np.ndarray:
    """BYTES elements as Triton's files hold them (a 4-byte little-endian length, then the
    bytes), as the UTF-8 strings ONNX Runtime's string tensors take."""
    found, at = [], 0
    while at < len(data):
        if at + 4 > len(data):
            raise WarmupError(f"{where}: input_data_file ends inside a BYTES element's length")
        (length,) = struct.unpack_from("<I", data, at)
        at += 4
        if at + length > len(data):
            raise WarmupError(f"{where}: input_data_file ends inside a BYTES element ({length} bytes said)")
        try:
            found.append(data[at:at + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise WarmupError(f"{where}: BYTES element {len(found)} of input_data_file is not UTF-8") from None
        at += length
    return np.array(found, dtype=object)
