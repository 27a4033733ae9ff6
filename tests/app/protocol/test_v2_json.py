"""V2 JSON tensors: a flat list of numbers becomes exactly the tensor numpy makes of it,
whichever way it is read (app/protocol/v2.py `_floats`), and a list that is not all numbers
(a string of digits included, which numpy would read as its number) is the 400 that says
so, wherever the bad value sits."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import InvalidInput, ParseElsewhere
from app.protocol.v2 import _floats
from app.protocol.values import dumps_with_non_finite, json_object
from tests.app.conftest import sample_images, serving

_NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53), st.booleans())


@settings(max_examples=300, deadline=None)
@given(first=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70)),
       rest=st.lists(_NUMBERS, max_size=40),
       dtype=st.sampled_from(["float32", "float64", "float16"]))
def test_a_flat_list_of_numbers_reads_bit_for_bit_as_numpy_casts_it(first: float, rest: list[Any],
                                                                    dtype: str) -> None:
    data = [first, *rest]
    with np.errstate(over="ignore"):  # a value beyond the type's range is inf either way
        want = np.asarray(data, dtype=dtype)
        got = _floats(data, np.dtype(dtype))
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()  # signed zeros, subnormals, rounding, overflow to inf


def _pixels_body(data: list[Any]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": data}]})


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 4), width=st.integers(1, 6), data=st.data(),
       dtype=st.sampled_from(["float32", "float64", "float16"]))
def test_rows_of_numbers_read_as_the_same_values_sent_flat(rows: int, width: int, data: st.DataObject,
                                                           dtype: str) -> None:
    numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70))
    flat = data.draw(st.lists(numbers, min_size=rows * width, max_size=rows * width))
    nested = [flat[r * width:(r + 1) * width] for r in range(rows)]
    with np.errstate(over="ignore"):
        got, want = _floats(nested, np.dtype(dtype)), _floats(flat, np.dtype(dtype))
    assert got.shape == (rows, width)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("data", [["1"] * 3, [None, "1", 0.5], [[None, "1"]], [0.5, "1", 2.0], [1, 2, "3"], [[0.5], ["1"]], [True, "1"]])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_a_string_is_not_read_as_the_number_it_spells(data: list[Any], dtype: str) -> None:
    np.asarray(data, dtype=dtype)  # numpy reads every one as a number, and raises nothing
    with pytest.raises(TypeError, match="a string among them"):
        _floats(data, np.dtype(dtype))


@pytest.mark.parametrize(("last", "message"), [
    ("a", "data is not a list of FP32 numbers"),
    ("1", "data is not a list of FP32 numbers (a string among them"),
    ([0.5], "data is not a list of FP32 numbers"),
    ({"x": 1}, "data is not a list of FP32 numbers"),
    (None, "holds NaN or infinite values"),  # numpy reads null as NaN
    (1e39, "holds NaN or infinite values"),  # finite in JSON, beyond FP32
])
async def test_a_bad_value_after_good_floats_is_a_400_that_says_what(last: Any, message: str) -> None:
    async with serving() as client:
        response = await client.post("/v2/models/fashion-cnn/infer", content=_pixels_body([0.25] * 783 + [last]))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


async def test_json_floats_answer_as_the_same_pixels_in_binary() -> None:
    pixels = (sample_images(3).astype(np.float32) / 255 - 0.3) / 0.35
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [3, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": pixels.nbytes}}]})
    async with serving() as client:
        as_json = await client.post("/v2/models/fashion-cnn/infer", content=orjson.dumps({"inputs": [
            {"name": "pixels", "shape": [3, 1, 28, 28], "datatype": "FP32", "data": pixels.ravel().tolist()}]}))
        as_binary = await client.post("/v2/models/fashion-cnn/infer", content=header + pixels.astype("<f4").tobytes(),
                                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert as_json.status_code == as_binary.status_code == 200, (as_json.text, as_binary.text)
    assert as_json.json()["outputs"] == as_binary.json()["outputs"]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"a": [NaN, 1', "Expecting ',' delimiter"),  # the rest of the body still has to be JSON
    (b'{"a": [NaN, "\\ud800"]}', "surrogates not allowed"),  # as orjson refuses it without a NaN
    (b'{"a": ' + b"[" * 1000 + b"NaN" + b"]" * 1000 + b"}", "nested too deeply"),
    (b'{"a": [nan]}', "expected 'null'"),  # only the words Triton writes
])
def test_a_body_with_nan_or_infinity_is_otherwise_held_to_json(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match="request body is not valid JSON") as refused:
        json_object(body, "")
    assert message in refused.value.message


def test_nan_and_infinities_read_and_written_as_triton_does() -> None:
    read = json_object(b'{"data": [NaN, Infinity, -Infinity, 1.5], "text": "null"}', "")
    assert np.isnan(read["data"][0])
    assert read["data"][1:] == [np.inf, -np.inf, 1.5]
    written = dumps_with_non_finite(read)
    assert written == b'{"data":[NaN,Infinity,-Infinity,1.5],"text":"null"}'
    assert dumps_with_non_finite({"label": "sch\u00f6n"}) == orjson.dumps({"label": "sch\u00f6n"})  # UTF-8, as orjson


async def test_a_mid_sized_body_with_nan_is_parsed_off_the_event_loop() -> None:
    """The standard library's parser takes 14 times orjson's time: over 16 KB, the event
    loop leaves it to a decode thread (app/inference.py), where it is read."""
    body = b'{"data": [NaN' + b", 1.5" * 5000 + b"]}"
    with pytest.raises(ParseElsewhere):
        json_object(body, "")
    read = await asyncio.to_thread(json_object, body, "")
    assert len(read["data"]) == 5001
    assert json_object(b'{"data": [NaN, 1.5]}', "")["data"][1] == 1.5  # a small one, on the loop
