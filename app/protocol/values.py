"""What every protocol reads alike from a client: a JSON object, and a timeout; and the
JSON of an answer whose numbers JSON has no words for."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson

from app.errors import InvalidInput, ParseElsewhere, UnprocessableInput
from app.sequences import SequenceFlags


def json_object(data: bytes, expected: str) -> dict[str, Any]:
    """A JSON object from bytes: 400 if it is not JSON, 422 if it is not an object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        value = _with_non_finite_numbers(data, e)
    if not isinstance(value, dict):
        raise UnprocessableInput(f"request body must be a JSON object {expected}")
    return value



NON_FINITE = (b"NaN", b"Infinity", b"-Infinity")
"""The words Triton reads and writes for the floats JSON cannot spell (as Python's json
does): its clients send them in float tensors, and expect them back."""


SLOW_PARSE_ON_LOOP_BYTES = 16 * 1024
"""The largest body with NaN or Infinity that the event loop parses itself: the standard
library's parser takes 14 times orjson's time (3.1 against 0.22 ms for 170 KB of floats),
which a client could send again and again."""


def _with_non_finite_numbers(data: bytes, error: orjson.JSONDecodeError) -> Any:
    """orjson stops at NaN and Infinity; where it stopped at one of them, the standard
    library's parser, which reads them, reads the body. Any other mistake is the 400."""
    if not bytes(data[error.pos:error.pos + len(b"-Infinity")]).startswith(NON_FINITE):
        raise InvalidInput(f"request body is not valid JSON: {error}") from error
    if len(data) > SLOW_PARSE_ON_LOOP_BYTES and _on_an_event_loop():
        raise ParseElsewhere(f"request body is not valid JSON here: NaN or Infinity in a body of over "
                             f"{SLOW_PARSE_ON_LOOP_BYTES} bytes ({error})")
    try:
        value = json.loads(bytes(data))
        orjson.dumps(value)  # what orjson refuses that json takes (a lone surrogate) stays refused
    except RecursionError as e:  # json's own depth limit (Python 3.11 and 3.12)
        raise InvalidInput(f"request body is not valid JSON: nested too deeply ({e})") from e
    except orjson.JSONEncodeError as e:  # orjson writes 255 levels at most: 3.13's json reads deeper
        why = "nested too deeply" if "Recursion limit" in str(e) else str(e)
        raise InvalidInput(f"request body is not valid JSON: {why}") from e
    except ValueError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from e
    return value


def _on_an_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def dumps_with_non_finite(value: Any) -> bytes:
    """`value` as JSON with NaN, Infinity and -Infinity written as such (orjson writes them
    as null, which a client would read as a missing value, or as NaN for an infinity)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode()


def priority_level(value: object) -> int:
    """A client's `priority` parameter (Triton's schedule policy): a whole number, 0 or more
    (0: the model's default level); whether the model has that level is its queue's to say."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"parameters.priority must be a whole number, 0 or more (1 the highest level, 0 the "
                           f"model's default), got {value!r}")
    return value


def sequence_flags(parameters: dict[str, Any]) -> SequenceFlags | None:
    """A request's `sequence_id` (a whole number or a string; 0 or "" none), `sequence_start`
    and `sequence_end` (booleans), as Triton's clients send them; None without an ID."""
    given = parameters.get("sequence_id")
    start, end = (_flag(parameters.get(name), name) for name in ("sequence_start", "sequence_end"))
    if isinstance(given, bool) or not isinstance(given, int | str | None) or isinstance(given, int) and not (
            0 <= given < 2**64):  # Triton's sequence IDs are uint64 or strings
        raise InvalidInput(f"parameters.sequence_id must be a whole number (0 to 2**64 - 1) or a string, got {given!r}")
    if given is None or given == 0 or given == "":
        if start or end:
            raise InvalidInput("parameters.sequence_start and sequence_end need a sequence_id (not 0 or empty)")
        return None
    return SequenceFlags(given, start, end)


def _flag(value: object, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"parameters.{name} must be true or false, got {value!r}")
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
