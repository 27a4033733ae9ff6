"""Triton's binary form of BYTES tensors (each element a 4-byte little-endian length and
its bytes), read and written; what a client can get wrong is a 400 that says what."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import InvalidInput
from app.protocol.binary import BinaryReader, strings_to_bytes
from app.protocol.v2 import classified


def test_strings_round_trip_through_the_binary_form() -> None:
    words = np.array([["yes", "né"], ["", "日本"]], dtype=object)
    blob = strings_to_bytes(words)
    assert blob[:4] == (3).to_bytes(4, "little")
    read = BinaryReader(memoryview(blob)).read_strings("words", len(blob), [2, 2])
    assert read.tolist() == words.tolist()


@pytest.mark.parametrize(("blob", "shape", "why"), [
    ((5).to_bytes(4, "little") + b"abc", [1], "string 0 runs past its binary_data_size"),
    ((1).to_bytes(4, "little") + b"\xff", [1], "string 0 is not UTF-8"),
    ((1).to_bytes(4, "little") + b"a" + b"??", [1], "2 bytes of binary_data_size follow its 1 strings"),
    ((0).to_bytes(4, "little"), [3], "needs 3 strings; 4 bytes hold at most 1"),
])
def test_malformed_strings_are_refused_with_why(blob: bytes, shape: list[int], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        BinaryReader(memoryview(blob)).read_strings("words", len(blob), shape)


def test_classification_strings_are_tritons_score_index_label() -> None:
    scores = np.array([[0.1, 2.5, -1.0]], dtype=np.float32)
    assert classified(scores, 2, ["a", "b", "c"]).tolist() == [["2.500000:1:b", "0.100000:0:a"]]
    assert classified(scores, 1, []).tolist() == [["2.500000:1"]]
