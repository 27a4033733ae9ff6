"""Triton's binary tensor data extension: raw little-endian tensors after a JSON header.

The JSON header's length travels in the `Inference-Header-Content-Length` HTTP header;
each binary input names its byte count in `parameters.binary_data_size`, in input order.
"""

from __future__ import annotations

import math

import numpy as np

from app.errors import InvalidInput

HEADER_LENGTH = b"inference-header-content-length"


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary remainder) of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    # Digits only: int() would also read " 12 ", "+12" and "1_2".
    if not (header_length.isascii() and header_length.isdigit()):
        raise InvalidInput(f"Inference-Header-Content-Length must be a count of bytes (digits), got {header_length!r}")
    n = int(header_length)
    if not 0 < n <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


class BinaryReader:
    """Hands out consecutive slices of the binary part, one per binary input."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def read(self, name: str, size: int, dtype: np.dtype, shape: list[int]) -> np.ndarray:
        if size < 0 or self.offset + size > len(self.data):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                               f"({len(self.data) - self.offset} bytes left)")
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, whatever the shape
        if size != expected:
            raise InvalidInput(f"input {name!r}: binary_data_size is {size} bytes but shape {shape} of "
                               f"{dtype.name} needs {expected}")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)

    def read_strings(self, name: str, size: int, shape: list[int]) -> np.ndarray:
        """A BYTES input: `shape`'s count of elements, each a 4-byte little-endian length and
        that many bytes (Triton's form), as UTF-8 strings (ONNX Runtime's string tensors)."""
        if size < 0 or self.offset + size > len(self.data):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                               f"({len(self.data) - self.offset} bytes left)")
        chunk, at = self.data[self.offset : self.offset + size], 0
        count = math.prod(shape)
        if count > size // 4:  # each element takes 4 bytes at least: refused before any is read
            raise InvalidInput(f"input {name!r}: shape {shape} needs {count} strings; {size} bytes hold at most "
                               f"{size // 4}")
        values = []
        for n in range(count):
            if at + 4 > size:
                raise InvalidInput(f"input {name!r}: its binary data ends within string {n} of {count}")
            length = int.from_bytes(chunk[at : at + 4], "little")
            if at + 4 + length > size:
                raise InvalidInput(f"input {name!r}: string {n} runs past its binary_data_size")
            try:
                values.append(bytes(chunk[at + 4 : at + 4 + length]).decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r}: string {n} is not UTF-8 (this model's strings are text)") from None
            at += 4 + length
        if at != size:
            raise InvalidInput(f"input {name!r}: {size - at} bytes of binary_data_size follow its {count} strings")
        self.offset += size
        return np.array(values, dtype=object).reshape(shape)

    def check_consumed(self) -> None:
        if self.offset != len(self.data):
            raise InvalidInput(f"{len(self.data) - self.offset} bytes of binary data are not claimed by any input")


def to_little_endian_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def strings_to_bytes(array: np.ndarray) -> bytes:
    """Triton's binary form of a BYTES tensor: each element's 4-byte little-endian length, then its bytes."""
    parts = []
    for value in array.flat:
        data = utf8(value)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def utf8(value: object) -> bytes:
    """A BYTES element as bytes: ORT gives strings, a client's binary input gives bytes."""
    return value if isinstance(value, bytes) else str(value).encode()
