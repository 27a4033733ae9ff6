"""Request headers read straight from the ASGI scope, and JSON responses encoded by orjson.

On the inference hot path, Starlette's Headers and body stream showed up at about a tenth
of the event loop's time per request (docs/benchmarks.md); bodies are read by
app/http/budget.py.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response


def header(request: Request, name: bytes) -> str | None:
    """The first value of a header; `name` is lower-case bytes, as ASGI gives names."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class JSONResponse(Response):
    """JSON encoded by orjson (numpy arrays included), with its headers built directly:
    Starlette's general header handling is a measurable cost on the event loop per
    response (docs/benchmarks.md). tests/app/http/test_responses.py checks the bytes and
    headers equal Starlette's JSONResponse for the same content."""

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        length = (b"content-length", str(len(self.body)).encode())
        if headers:  # extra headers first, as Starlette orders them
            self.raw_headers = [*((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
                                length, _JSON_TYPE]
        else:
            self.raw_headers = [length, _JSON_TYPE]


class JSONBytes(JSONResponse):
    """JSON already encoded (by the inference path), with the same headers."""

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]


_JSON_TYPE = (b"content-type", b"application/json")

