"""What the V1 and V2 routes share: the running app's repository and settings, documented errors."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.protocol.v2 import ErrorResponse
from app.repository import ModelRepository
from app.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 503, 504)
}


def repository(request: Request) -> ModelRepository:
    return request.app.state.repository


def settings(request: Request) -> Settings:
    return request.app.state.settings
