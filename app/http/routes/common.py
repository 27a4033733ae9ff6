"""What the routes share: access checks, documented errors, path parameters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import Response

from app.access import check_admin, check_api_key
from app.http.encodings import answer_coding, packed
from app.http.responses import JSONBytes, header
from app.http.services import Services, services
from app.protocol.v2 import ErrorResponse

_MEANINGS = {
    400: "The input is malformed or does not fit the model (names, types, shapes, values); "
         "the message says what was received and what was expected.",
    401: "API keys are configured and the request has none, or a wrong one.",
    404: "No such model or version.",
    405: "The path takes another method (the Allow header names it).",
    408: "The body did not arrive in full within body_timeout_s.",
    413: "The body, or the items it asks for, exceed a limit (max_body_bytes, a queue's size).",
    422: "The body is JSON of the wrong structure.",
    503: "The model is not being served (loading, failed to load, unloaded, resting after failed "
         "batches), or its queue is full (with Retry-After).",
    504: "The request missed its deadline (request_timeout_s, or the one it asked for).",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the errors an operation can answer, each `{"error": "..."}`."""
    return {code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in codes}


INFER_ERRORS = errors(400, 401, 404, 408, 413, 422, 503, 504)
MODEL_ERRORS = errors(404, 503)
"""A model's GET routes: an unknown model or version, or one that is not being served."""


ModelName = Annotated[str, Path(description="The model's name (GET /v2/repository/index or /v1/models lists them)",
                                examples=["fashion-cnn"])]
Version = Annotated[str, Path(description="One of the model's served versions (its metadata lists them)",
                              examples=["1"])]
"""Path parameters, documented once; the OpenAPI document fills in a served version (openapi.py)."""


def authorize(request: Request, found: Services) -> None:
    """The inference endpoints' API key check (app/access.py)."""
    if found.api_keys:  # the header is read only where keys are configured: this is every request's path
        check_api_key(header(request, b"authorization"), found.api_keys)


def authorize_admin(request: Request, *, changes: bool) -> None:
    """The repository API's check (app/access.py): 403 while it is off or for a change the
    control mode does not allow, 401 for a wrong or missing token."""
    found = services(request)
    check_admin(header(request, b"authorization"), found.admin_token, found.settings.model_control_mode,
                changes=changes)


async def large_answer(request: Request, found: Services, content: bytes,
                       binary: dict[str, str] | None = None) -> Response:
    """An inference answer over PACK_ANSWERS_FROM bytes (the routes send a smaller one as it
    is, without this call), packed with gzip or deflate on a decode thread where the client
    accepts that (app/http/encodings.py). `binary`: the headers of Triton's binary tensors,
    for an answer that has them; else it is JSON."""
    headers = dict(binary or {})
    coding = answer_coding(header(request, b"accept-encoding"))
    if coding is not None:
        content = await found.offload.run(packed, content, coding)
        headers |= {"Content-Encoding": coding, "Vary": "Accept-Encoding"}
    if not headers:
        return JSONBytes(content)
    return Response(content, media_type="application/json" if binary is None else "application/octet-stream",
                    headers=headers)
