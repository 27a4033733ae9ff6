"""What the routes share: access checks, documented errors, path parameters."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Path, Request

from app.errors import Forbidden, Unauthorized
from app.http.responses import header
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


def bearer_token(request: Request) -> str | None:
    value = header(request, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def matches_any(token: str | None, secrets: list[bytes]) -> bool:
    """Constant-time comparison with every secret (no early exit on the first match)."""
    given = (token or "").encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret)
    return found and token is not None


def authorize(request: Request, found: Services) -> None:
    """The inference endpoints' API key check; nothing to do unless keys are configured."""
    keys = found.api_keys
    if keys and not matches_any(bearer_token(request), keys):
        raise Unauthorized("this endpoint needs an API key: send 'Authorization: Bearer <key>'")


def authorize_admin(request: Request, *, changes: bool) -> None:
    """The repository API's check: off without an admin token, 401 for a wrong or missing
    token, 403 for load and unload where the control mode does not allow them."""
    found = services(request)
    token = found.admin_token
    if token is None:
        raise Forbidden("the repository API is off: configure an admin token (ORTSERVE_ADMIN_TOKEN or "
                        "ORTSERVE_ADMIN_TOKEN_FILE) to use it")
    if not matches_any(bearer_token(request), [token]):
        raise Unauthorized("the repository API needs the admin token: send 'Authorization: Bearer <token>'")
    mode = found.settings.model_control_mode
    if changes and mode != "explicit":
        raise Forbidden(f"models are loaded and unloaded through the API only in the explicit model control "
                        f"mode; this server runs in {mode!r} mode")
