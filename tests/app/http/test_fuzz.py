"""Fuzzing: schemathesis against the OpenAPI document of a real server, and hypothesis
property tests of the decoders. Invariants: never a 5xx or an unexpected exception, every
4xx is JSON with a message, no call that hangs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import InvalidInput
from app.manifest import ImagePreprocessing, load_manifest
from app.preprocess import ImageLimits, PreprocessError, Tokenizer, decode_base64_image, decode_image
from app.protocol.v2 import decode_inputs, parse_request
from load_tests.fuzz import fuzz_operation, fuzzed_server, operations
from tests.conftest import MODELS, model_folder


@pytest.mark.server
def test_every_operation_answers_without_a_server_error(tmp_path: Path) -> None:
    """schemathesis generates requests for every operation of the served OpenAPI document
    (load_tests/fuzz.py, which also prints the slowest answers: a figure, not a bound here)."""
    slowest: dict[str, float] = {}
    with fuzzed_server(MODELS, tmp_path) as server:
        found = operations(server.url)
        assert len(found) >= 15
        for operation in found:
            fuzz_operation(operation, 25, slowest)
    assert len(slowest) == len(found)  # every operation was called and answered


# --- the decoders, directly --------------------------------------------------------------

FASHION = load_manifest(model_folder("fashion-cnn"))
SST2 = load_manifest(model_folder("sst2-lstm"))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
                           max_leaves=40)
shapes = st.lists(st.integers(min_value=-5, max_value=2**64), min_size=0, max_size=5)
tensor_entries = st.fixed_dictionaries({
    "name": st.sampled_from(["pixels", "token_ids", "lengths", "x"]),
    "shape": shapes,
    "datatype": st.sampled_from(["FP32", "INT64", "FP16", "BOOL", "BYTES", "X"]),
}, optional={"data": json_values,
             "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-10, 10_000) | json_values})})


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(json_values, st.fixed_dictionaries({"inputs": st.lists(tensor_entries, max_size=3)},
                                                        optional={"parameters": json_values, "outputs": json_values})),
       binary=st.binary(max_size=64), header_length=st.none() | st.integers(-3, 300).map(str) | st.text(max_size=4))
def test_v2_decoding_refuses_what_it_cannot_use_and_nothing_else(body: object, binary: bytes,
                                                                  header_length: str | None) -> None:
    raw = json.dumps(body).encode()  # big integers and NaN included: what a client may really send
    for manifest in (FASHION, SST2):
        try:
            request, reader = parse_request(raw + binary, header_length)
            arrays = decode_inputs(request, reader, manifest)
        except InvalidInput as e:
            refused = e.message
            assert refused
            continue
        for spec in manifest.inputs:
            assert arrays[spec.name].dtype == np.dtype(spec.numpy_dtype)
            assert len(arrays[spec.name].shape) == len(spec.shape)


IMAGE = ImagePreprocessing(height=28, width=28, scale=1 / 255, mean=0.25, std=0.5)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512) | st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))
def test_image_decoding_of_any_bytes_is_pixels_or_a_preprocess_error(data: bytes) -> None:
    try:
        pixels = decode_image(data, IMAGE, ImageLimits(max_pixels=10_000))
    except PreprocessError as e:
        refused = str(e)
        assert refused
        return
    assert pixels.shape == (28, 28)
    assert pixels.dtype == np.uint8


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_base64_text_of_any_kind_is_pixels_or_a_preprocess_error(text: str) -> None:
    for candidate in (text, base64.b64encode(text.encode()).decode()):
        try:
            decode_base64_image(candidate, IMAGE)
        except PreprocessError as e:
            refused = str(e)
            assert refused


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_any_text_becomes_valid_token_ids(texts: list[str]) -> None:
    spec = SST2.preprocessing
    tokenizer = Tokenizer.from_file(Path(model_folder("sst2-lstm")) / spec.vocabulary_file, spec)  # type: ignore[arg-type,union-attr]
    ids, lengths = tokenizer.encode_batch(texts)
    assert ids.shape[0] == len(texts)
    assert lengths.min() >= 1
    assert lengths.max() <= spec.max_length  # type: ignore[union-attr]
    assert ids.min() >= 0
    assert ids.max() < len(tokenizer.vocabulary)
