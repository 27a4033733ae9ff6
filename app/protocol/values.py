"""What every protocol reads alike from a client: a JSON object, and a timeout."""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import InvalidInput, UnprocessableInput


def json_object(data: bytes, expected: str) -> dict[str, Any]:
    """A JSON object from bytes: 400 if it is not JSON, 422 if it is not an object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise UnprocessableInput(f"request body must be a JSON object {expected}")
    return value



def positive_timeout(value: object, what: str, unit_s: float) -> float:
    """A client's timeout in seconds, from a positive number of `unit_s` units (a JSON
    number, or text holding one as a header does; true or a list is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{what} must be a positive number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"{what} must be a positive number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise InvalidInput(f"{what} must be a positive number, got {value!r}")
    return number * unit_s
