"""The hand-written JSONResponse equals Starlette's for the same content, bytes and headers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from starlette.responses import JSONResponse as StarletteJSONResponse

from app.http.responses import JSONResponse

CONTENTS: list[Any] = [
    {"error": "unknown model 'x'"},
    {"predictions": [{"label": "positive", "index": 1, "probabilities": [0.04, 0.96]}],
     "model_name": "sst2-lstm", "model_version": "1"},
    {"text": "ça marche 🎬", "nested": {"a": [1, 2.5, -0.001, None, True]}},
    [],
]


@pytest.mark.parametrize("content", CONTENTS)
def test_bytes_and_headers_equal_starlettes(content: Any) -> None:
    ours, theirs = JSONResponse(content), StarletteJSONResponse(content)
    assert ours.body == theirs.body
    assert ours.raw_headers == theirs.raw_headers
    assert ours.status_code == theirs.status_code == 200


def test_status_and_extra_headers_equal_starlettes() -> None:
    ours = JSONResponse({"error": "full"}, 503, {"Retry-After": "1"})
    theirs = StarletteJSONResponse({"error": "full"}, 503, {"Retry-After": "1"})
    assert (ours.body, ours.status_code, ours.raw_headers) == (theirs.body, theirs.status_code, theirs.raw_headers)


def test_numpy_values_encode_as_their_python_equivalents() -> None:
    array = np.array([0.5, 0.25], dtype=np.float64)
    assert JSONResponse({"p": array}).body == StarletteJSONResponse({"p": array.tolist()}).body


def test_exponents_are_written_differently_but_mean_the_same() -> None:
    """orjson writes 1e-7 where json writes 1e-07: the one byte-level difference, same values."""
    content = {"p": [1e-7, -3.5e-12, 1e22]}
    ours, theirs = JSONResponse(content), StarletteJSONResponse(content)
    assert json.loads(ours.body) == json.loads(theirs.body) == content
